"""Webhooks through the real deployment: exactly the terminal events reach a local
receiver, signed so that the openai package's `webhooks.unwrap` verifies them with the
tenant's secret (from `genqueue webhooks set`), after the receiver failed at first;
every attempt shows in /v1/jobs/{id}/webhooks; bad URLs are 400s naming the field; an
API process SIGKILLed with a delivery pending delivers it once it is started again."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from genqueue.storage import catalog, tenants, webhooks
from genqueue.storage.db import open_store
from tests.api.conftest import WEBHOOKS_FAST, ApiServer, _start, openai_line, wait_until_up
from tests.receiver import Receiver
from tests.services import free_port

pytestmark = pytest.mark.slow

TENANT = "hooks"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def _wait_state(http: Any, job_id: str, bound: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + bound
    while True:
        st = http.get(f"/v1/jobs/{job_id}").json()
        if st["state"] not in ("queued", "running"):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.2)


def _key(api_server: ApiServer, tenant: str) -> None:
    if tenant not in api_server.keys:
        store = open_store(api_server.env["GENQUEUE_DATABASE_URL"])
        api_server.keys[tenant] = tenants.create_key(store, tenant)[1]
        store.dispose()


def test_terminal_events_are_delivered_signed_and_recorded(
    api_server: ApiServer, receiver: Receiver
) -> None:
    _key(api_server, TENANT)
    receiver.fail_first = 1
    secret = api_server.gq(
        "webhooks", "set", "--tenant", TENANT, "--url", receiver.url + "/default"
    ).stdout.strip()
    assert secret.startswith("whsec_")

    with api_server.http(TENANT) as http:
        spec = {
            "model": "gpt2",
            "template": "Say: {text}",
            "params": {"max_new_tokens": 2},
            "webhook_url": receiver.url + "/job",
            "records": [{"text": f"t{i}"} for i in range(4)] + [{"text": "word " * 700}],
        }
        r = http.post("/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        done = r.json()["job_id"]
        assert r.json()["webhook_url"] == receiver.url + "/job"
        idle = http.post(
            "/v1/jobs", json={"model": "idle", "records": [{"prompt": "never runs"}]}
        ).json()["job_id"]
        assert http.post(f"/v1/jobs/{idle}/cancel").status_code == 200
        client = api_server.openai(TENANT)
        f = client.files.create(
            file=("in.jsonl", (openai_line("a", "gpt2") + "\n").encode()), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert _wait_state(http, done)["state"] == "completed_with_errors"

        got = receiver.wait(3, bound=120)
        time.sleep(1.0)  # nothing else is sent
        assert len(receiver.delivered()) == 3
        events = {}
        for req in receiver.delivered():
            event = client.webhooks.unwrap(req.body, req.headers, secret=secret)
            events[(req.path, event.type)] = json.loads(req.body)["data"]["id"]
        assert events == {
            ("/job", "job.completed_with_errors"): done,
            ("/default", "job.cancelled"): idle,
            ("/default", "batch.completed"): batch.id,
        }
        assert client.batches.retrieve(batch.id).status == "completed"
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.unwrap(got[0].body, got[0].headers, secret=webhooks.new_secret())

        # Every attempt is recorded: the receiver's first answer was a 500.
        codes = []
        for job_id in (done, idle, batch.id):
            (view,) = http.get(f"/v1/jobs/{job_id}/webhooks").json()["data"]
            assert view["state"] == "delivered"
            codes.append([a["status_code"] for a in view["attempts"]])
        assert sorted(codes) == [[200], [200], [500, 200]]
        assert len(receiver.requests) == 4

        # The dashboard's job page lists the attempts too.
        page = httpx.get(
            f"{api_server.url}/jobs/{done}", cookies={"gq_session": api_server.keys[TENANT]}
        )
        assert page.status_code == 200
        section = page.text.split('id="webhook-deliveries"', 1)[1].split("</section>", 1)[0]
        assert "job.completed_with_errors" in section and receiver.url + "/job" in section
        assert section.count("<tr>") == 1 + len(codes[0])

        # Another tenant sees none of it.
        with api_server.http("bob") as other:
            assert other.get(f"/v1/jobs/{done}/webhooks").status_code == 404


def test_bad_webhook_urls_are_400s_naming_the_field(api_server: ApiServer) -> None:
    _key(api_server, TENANT)
    _key(api_server, "nohooks")
    records = [{"prompt": "x"}]
    with api_server.http(TENANT) as http:
        for url, why in (
            ("ftp://example.com/x", "scheme 'ftp' is not allowed"),
            ("https://u:p@example.com/x", "credentials in the URL are not allowed"),
            ("not a url", "whitespace"),
        ):
            r = http.post(
                "/v1/jobs", json={"model": "gpt2", "records": records, "webhook_url": url}
            )
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["param"] == "webhook_url" and err["message"].startswith("webhook_url: ")
            assert why in err["message"]
    with api_server.http("nohooks") as http:
        r = http.post(
            "/v1/jobs", json={"model": "gpt2", "records": records, "webhook_url": "https://x.io"}
        )
        assert r.status_code == 400 and "genqueue webhooks set --tenant nohooks" in r.text
    client = api_server.openai(TENANT)
    f = client.files.create(
        file=("x.jsonl", (openai_line("a", "gpt2") + "\n").encode()), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"webhook_url": "file:///etc/passwd"},
        )
    assert "metadata.webhook_url: scheme 'file' is not allowed" in str(info.value)


def test_a_delivery_pending_when_the_api_is_killed_is_sent_after_its_restart(
    tmp_path: Path, tiny_gpt2_dir: Path, receiver: Receiver
) -> None:
    db = f"sqlite:///{tmp_path / 'gq.db'}"
    store = open_store(db)
    catalog.offer_model(store, "gpt2", str(tiny_gpt2_dir))
    key = tenants.create_key(store, "solo")[1]
    secret = webhooks.set_endpoint(store, "solo", url=receiver.url + "/solo")[0].secret
    env = {
        "GENQUEUE_DATABASE_URL": db,
        "GENQUEUE_BROKER_URL": "",
        "GENQUEUE_HOME": str(tmp_path / "home"),
        "GENQUEUE_FILES_DIR": str(tmp_path / "files"),
        "GENQUEUE_METRICS_PUBLIC": "true",
        **WEBHOOKS_FAST,
    }
    receiver.failing = True
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    import httpx2 as httpx

    headers = {"Authorization": f"Bearer {key}"}
    proc = _start(["api", "--port", str(port)], env, log)
    try:
        wait_until_up(url, proc, log)
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            job = http.post("/v1/jobs", json={"model": "gpt2", "records": [{"prompt": "p"}]})
            assert job.status_code == 201, job.text
            job_id = job.json()["job_id"]
            assert http.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
            deadline = time.monotonic() + 30
            while not receiver.requests:
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.05)
            # Opted in: /metrics without a key (everything else still needs one).
            assert httpx.get(url + "/metrics").status_code == 200
            assert httpx.get(url + f"/v1/jobs/{job_id}").status_code == 401
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        failed = len(receiver.requests)
        assert failed >= 1 and not receiver.delivered()
        receiver.failing = False
        proc = _start(["api", "--port", str(port)], env, log)
        wait_until_up(url, proc, log)
        (got,) = receiver.wait(1, bound=30)
        event = openai.OpenAI(api_key="x").webhooks.unwrap(got.body, got.headers, secret=secret)
        assert event.type == "job.cancelled"  # type: ignore[comparison-overlap]
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            (view,) = http.get(f"/v1/jobs/{job_id}/webhooks").json()["data"]
        assert view["state"] == "delivered"
        assert [a["status_code"] for a in view["attempts"]][-1] == 200
        # (the attempt in flight when it was killed may not have been recorded)
        assert len(view["attempts"]) >= failed
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except Exception:
            proc.kill()
        store.dispose()
