"""The dashboard without a browser (the FastAPI app in-process, on its own SQLite
store): login, tenant isolation of every page and action, an admin seeing everything,
the CSRF checks, the workers page against SQL, and the storage reads behind it on
SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from genqueue.api import create_app
from genqueue.settings import Settings
from genqueue.storage import leases, lifecycle, progress, tenants, workers
from genqueue.storage.claims import Claim
from genqueue.storage.db import Store, open_store, utcnow
from genqueue.storage.models import ResultStatus, WorkerRow
from genqueue.storage.results import NewResult, write_results
from tests.storage.factories import finish, make_job, ok, task_ids

MODEL = "/models/tiny-a"
UNSERVED_MODEL = "/models/tiny-b"


@dataclass
class Dash:
    store: Store
    app: Any
    keys: dict[str, str]
    ids: dict[str, str]

    def client(self, who: str | None) -> TestClient:
        c = TestClient(self.app, base_url="http://127.0.0.1:8000")
        if who is not None:
            r = c.post("/login", data={"key": self.keys[who]}, follow_redirects=False)
            assert r.status_code == 303, r.text
        return c


def claim(store: Store, job_id: str, worker: str) -> Claim:
    got = leases.claim_task(
        store, task_ids(store, job_id)[0], worker, lease_seconds=60, max_attempts=3
    )
    assert isinstance(got, Claim), got
    return got


@pytest.fixture
def dash(tmp_path: Path) -> Iterator[Dash]:
    url = f"sqlite:///{tmp_path / 'gq.db'}"
    store = open_store(url)
    keys = {
        "alice": tenants.create_key(store, "alice")[1],
        "bob": tenants.create_key(store, "bob")[1],
        "admin": tenants.create_key(store, "ops", admin=True)[1],
    }
    a = make_job(store, 10, 4, tenant="alice", model=MODEL, queue="q-a")
    b = make_job(store, 3, 4, tenant="bob", model=UNSERVED_MODEL, queue="q-b")
    workers.beat(store, "gq-11@host-a", queue="q-a", model=MODEL, engine="dry-run")
    c = claim(store, a.id, "gq-11@host-a")
    failed = NewResult(
        idx=2,
        status=ResultStatus.FAILED,
        error_code="prompt_too_long",
        error_message="the prompt is 900 tokens",
    )
    write_results(store, c, [ok(0, "first output"), ok(1), failed])
    settings = Settings().model_copy(
        update={"database_url": url, "broker_url": None, "files_dir": str(tmp_path / "f")}
    )
    app = create_app(settings, store=store)
    yield Dash(store, app, keys, {"alice": a.id, "bob": b.id, "task": str(c.task_id)})
    store.dispose()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def test_pages_need_a_login_and_a_bad_key_says_why(dash: Dash) -> None:
    c = dash.client(None)
    for path in ("/", "/workers", f"/jobs/{dash.ids['alice']}"):
        r = c.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    r = c.post("/login", data={"key": "gq-not-a-key"})
    assert r.status_code == 401
    assert "the API key is unknown or revoked" in r.text
    assert "gq_session" not in r.headers.get("set-cookie", "")
    assert "enter an API key" in c.post("/login", data={"key": " "}).text
    # A good key: an HttpOnly, SameSite=Strict cookie, and back where the user was going.
    r = c.post(
        "/login", data={"key": dash.keys["alice"], "next": "/workers"}, follow_redirects=False
    )
    cookie = r.headers["set-cookie"]
    assert r.headers["location"] == "/workers"
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    # Never redirected off the site.
    r = c.post(
        "/login",
        data={"key": dash.keys["alice"], "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/"


def test_a_revoked_key_ends_its_sessions(dash: Dash) -> None:
    c = dash.client("alice")
    assert c.get("/").status_code == 200
    (key,) = [k for k in tenants.list_keys(dash.store) if k.tenant == "alice"]
    tenants.revoke_key(dash.store, key.id)
    assert c.get("/", follow_redirects=False).status_code == 303


def test_a_tenant_sees_only_its_own_jobs_everywhere(dash: Dash) -> None:
    alice, bob = dash.ids["alice"], dash.ids["bob"]
    c = dash.client("alice")
    index = c.get("/").text
    assert alice in index and bob not in index
    assert bob not in c.get("/?state=queued").text
    page = c.get(f"/jobs/{alice}")
    assert page.status_code == 200
    # Counts, the failed item with its line number and custom id, the recent results.
    assert "3/10" in page.text
    assert "prompt_too_long" in page.text and "<td>c2</td>" in page.text
    assert '<td class="num">3</td>' in page.text  # line 3 (idx 2)
    assert "first output" in page.text
    # Another tenant's job: not found on every page and action, and untouched.
    token = csrf_of(index)
    assert c.get(f"/jobs/{bob}").status_code == 404
    for fmt in ("jsonl", "csv"):
        assert c.get(f"/jobs/{bob}/download/{fmt}").status_code == 404
    for action in ("cancel", "retry"):
        r = c.post(f"/jobs/{bob}/{action}", data={"csrf": token})
        assert r.status_code == 404, (action, r.text)
    assert dash.client("bob").get(f"/jobs/{bob}").status_code == 200
    with dash.store.read() as s:
        from genqueue.storage.models import Job

        job = s.get(Job, bob)
        assert job is not None and not job.cancel_requested
    # The workers page names only alice's own jobs.
    assert alice in c.get("/workers").text
    bobs_workers = dash.client("bob").get("/workers").text
    assert alice not in bobs_workers and "another tenant's job" in bobs_workers
    # Bob's queue (no worker) is bob's: alice does not see it, bob does.
    assert "tiny-b" not in c.get("/workers").text
    assert "tiny-b" in bobs_workers


def test_an_admin_sees_every_tenant(dash: Dash) -> None:
    c = dash.client("admin")
    index = c.get("/").text
    assert dash.ids["alice"] in index and dash.ids["bob"] in index
    assert "admin: every tenant" in index
    assert c.get(f"/jobs/{dash.ids['bob']}").status_code == 200
    page = c.get("/workers").text
    assert dash.ids["alice"] in page and "tiny-b" in page


def test_cancel_and_retry_go_through_the_api_and_need_the_token(dash: Dash) -> None:
    alice = make_job(dash.store, 5, 5, tenant="alice", model=MODEL, queue="q-a").id
    c = dash.client("alice")
    page = c.get(f"/jobs/{alice}").text
    assert 'id="cancel"' in page and "data-confirm" in page
    token = csrf_of(page)
    # Without the token, with a wrong one, or from another site: refused, nothing changes.
    assert c.post(f"/jobs/{alice}/cancel").status_code == 403
    assert c.post(f"/jobs/{alice}/cancel", data={"csrf": "0" * 64}).status_code == 403
    r = c.post(
        f"/jobs/{alice}/cancel",
        data={"csrf": token},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert r.status_code == 403
    # Another session's token does not work in this one.
    assert (
        c.post(
            f"/jobs/{alice}/cancel", data={"csrf": csrf_of(dash.client("bob").get("/").text)}
        ).status_code
        == 403
    )
    assert "cancelled" not in c.get(f"/jobs/{alice}").text.split('id="state"')[1][:40]
    r = c.post(
        f"/jobs/{alice}/cancel", data={"csrf": token}, headers={"Origin": "http://127.0.0.1:8000"}
    )
    assert r.status_code == 200 and "Cancel requested" in r.text
    # The API shows the same job cancelled.
    api = TestClient(dash.app).get(
        f"/v1/jobs/{alice}", headers={"Authorization": f"Bearer {dash.keys['alice']}"}
    )
    assert api.json()["state"] == "cancelled", api.json()
    page = c.get(f"/jobs/{alice}").text
    assert 'id="retry"' in page
    r = c.post(f"/jobs/{alice}/retry", data={"csrf": token})
    assert r.status_code == 200 and "queued again" in r.text
    # Downloads: the API's result lines, as an attachment.
    r = c.get(f"/jobs/{alice}/download/jsonl")
    assert r.status_code == 200
    assert r.headers["content-disposition"] == f'attachment; filename="{alice}.jsonl"'
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [line["custom_id"] for line in lines] == []  # queued again: nothing done yet
    r = c.get(f"/jobs/{dash.ids['alice']}/download/csv")
    assert r.status_code == 200 and "first output" in r.text


def test_the_workers_page_matches_sql(dash: Dash) -> None:
    # A second worker, silent for a minute: listed as stale, and not counted live.
    workers.beat(dash.store, "gq-12@host-b", queue="q-a", model=MODEL, engine="hf")
    with dash.store.session() as s:
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.name == "gq-12@host-b")
            .values(seen_at=utcnow() - timedelta(seconds=300))
        )
    views = {w.name: w for w in workers.list_workers(dash.store, within_seconds=30)}
    live, stale = views["gq-11@host-a"], views["gq-12@host-b"]
    assert live.live and live.host == "host-a" and live.engine == "dry-run"
    assert [(t.task_id, t.job_id, t.n_items, t.done) for t in live.tasks] == [
        (int(dash.ids["task"]), dash.ids["alice"], 4, 3)
    ]
    assert live.items_per_second > 0
    assert not stale.live and stale.heartbeat_age >= 299 and not stale.tasks
    depths = {q.queue: q for q in workers.queue_depths(dash.store, within_seconds=30)}
    # q-a: 10 items, task 1 (4 items) leased with 3 results: 6 waiting, 1 running.
    assert (depths["q-a"].waiting, depths["q-a"].running, depths["q-a"].live_workers) == (6, 1, 1)
    assert not depths["q-a"].unserved
    assert (depths["q-b"].waiting, depths["q-b"].live_workers) == (3, 0)
    assert depths["q-b"].unserved

    page = dash.client("admin").get("/workers").text
    row = page.split('data-worker="gq-11@host-a"')[1].split("</tr>")[0]
    assert "host-a" in row and "dry-run" in row and f"task {dash.ids['task']} (3/4)" in row
    assert 'class="stale"' in page.split('data-worker="gq-12@host-b"')[1][:40]
    queue_b = page.split('data-queue="q-b"')[1].split("</tr>")[0]
    assert "no live worker" in queue_b and f"genqueue worker --model {UNSERVED_MODEL}" in queue_b
    # The job page and the list warn about bob's job, with the command.
    bob = dash.client("bob")
    for path in ("/", f"/jobs/{dash.ids['bob']}"):
        text = bob.get(path).text
        assert f'data-warning="{dash.ids["bob"]}"' in text
        assert f"genqueue worker --model {UNSERVED_MODEL}" in text
    assert "data-warning" not in dash.client("alice").get("/").text


def test_keyless_server_serves_the_default_tenant_without_login(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gq.db'}"
    store = open_store(url)
    job = make_job(store, 2, 2, model=MODEL, queue="q-a")
    settings = Settings().model_copy(
        update={"database_url": url, "broker_url": None, "files_dir": str(tmp_path / "f")}
    )
    c = TestClient(create_app(settings, store=store))
    page = c.get("/")
    assert page.status_code == 200 and job.id in page.text and "Log out" not in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert c.get("/ui/static/dashboard.js").status_code == 200
    assert c.get("/ui/static/..%2Fdashboard.py").status_code == 404
    # Not part of the API's OpenAPI document.
    assert not any(
        p == "/" or p.startswith("/jobs") for p in c.get("/openapi.json").json()["paths"]
    )
    store.dispose()


def test_throughput_and_recent_results_on_both_databases(store: Store) -> None:
    job = make_job(store, 8, 8, tenant="alice", model=MODEL, queue="q-a")
    c = claim(store, job.id, "gq-1@h")
    write_results(store, c, [ok(i) for i in range(5)])
    t = progress.throughput(store, job.id)
    assert sum(t.counts) == 5 and sum(t.tokens) == 20 and t.width >= 1.0
    recent = progress.recent_results(store, job.id, limit=3)
    assert len(recent) == 3 and all(r.status == "succeeded" for r in recent)
    assert {r.line for r in recent} <= {1, 2, 3, 4, 5}
    assert progress.recent_results(store, job.id, failed=True) == []
    runs = progress.attempts_by_worker(store, job.id)
    assert [(r.worker, r.attempts) for r in runs] == [("gq-1@h", 1)]
    assert progress.throughput(store, "job_none").counts == []
    # Cancelled items filled in at the end are not throughput.
    lifecycle.request_cancel(store, job.id)
    finish(store, c, "done")
    lifecycle.finalize_job(store, job.id)
    assert progress.recent_results(store, job.id, limit=1)[0].status == "cancelled"
    assert sum(progress.throughput(store, job.id).counts) == 5


def test_batches_show_their_jobs_and_a_validating_one_says_so(dash: Dash) -> None:
    from genqueue.storage import loading
    from genqueue.storage.models import Batch

    batch = loading.create_batch(
        dash.store, input_name="two.jsonl", meta={}, options={}, tenant="alice"
    )
    assert isinstance(batch, Batch)
    jobs = [
        make_job(dash.store, 4, 4, tenant="alice", model=m, queue="q-a", batch_id=batch.id).id
        for m in (MODEL, UNSERVED_MODEL)
    ]
    pending = loading.create_batch(
        dash.store, input_name="x", meta={}, options={}, tenant="alice", phase="validating"
    )
    assert isinstance(pending, Batch)
    c = dash.client("alice")
    index = c.get("/").text
    row = index.split(f'data-batch="{batch.id}"')[1].split("</tr>")[0]
    assert '"done">0</span>/8' in row and "tiny-a, tiny-b" in row
    page = c.get(f"/jobs/{batch.id}")
    assert page.status_code == 200 and all(f'data-job="{j}"' in page.text for j in jobs)
    assert f"/jobs/{batch.id}/download/jsonl" in page.text
    r = c.get(f"/jobs/{pending.id}")
    assert r.status_code == 200 and "no jobs yet" in r.text
    # Bob sees neither.
    bob = dash.client("bob")
    assert batch.id not in bob.get("/").text
    assert bob.get(f"/jobs/{batch.id}").status_code == 404
    assert bob.get(f"/jobs/{pending.id}").status_code == 404


@pytest.mark.parametrize(
    "target", ["//evil.example/", "/\t/evil.example/", "/\\evil.example", "https://evil.example"]
)
def test_login_never_redirects_off_the_site(dash: Dash, target: str) -> None:
    c = TestClient(dash.app)
    r = c.post("/login", data={"key": dash.keys["alice"], "next": target}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
