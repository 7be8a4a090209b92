"""/metrics through the real deployment: an admin key is needed, the text parses with
prometheus_client's parser, and after a real job with failures every figure equals
what SQL says (the same for any API process: nothing is counted in memory)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from genqueue.protocol import queue_for
from genqueue.storage import tenants
from genqueue.storage.db import Store, open_store
from genqueue.storage.metrics import BATCH_BUCKETS
from tests.api.conftest import ApiServer

pytestmark = pytest.mark.slow


def _scrape(api_server: ApiServer) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with api_server.http("ops-admin") as http:
        r = http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _sql(store: Store) -> dict[str, Any]:
    """The figures, by plain SQL of the test's own."""
    with store.engine.connect() as c:

        def rows(q: str) -> dict[tuple[Any, ...], float]:
            return {tuple(r[:-1]): float(r[-1]) for r in c.execute(text(q))}

        return {
            "jobs": rows("SELECT state, count(*) FROM jobs GROUP BY state"),
            "items": rows(
                "SELECT j.model, r.status, count(*) FROM results r JOIN jobs j ON j.id = r.job_id "
                "WHERE j.state <> 'submitting' GROUP BY j.model, r.status"
            ),
            "prompt": rows(
                "SELECT j.model, sum(coalesce(r.prompt_tokens, 0)) FROM results r "
                "JOIN jobs j ON j.id = r.job_id WHERE j.state <> 'submitting' GROUP BY j.model"
            ),
            "generated": rows(
                "SELECT j.model, sum(coalesce(r.completion_tokens, 0)) FROM results r "
                "JOIN jobs j ON j.id = r.job_id WHERE j.state <> 'submitting' GROUP BY j.model"
            ),
            "batches": rows(
                "SELECT j.model, count(*) FROM (SELECT job_id FROM results "
                "WHERE latency_ms IS NOT NULL GROUP BY job_id, task_id, attempt, latency_ms) b "
                "JOIN jobs j ON j.id = b.job_id GROUP BY j.model"
            ),
            "expiries": c.execute(
                text("SELECT count(*) FROM attempts WHERE outcome = 'lease_expired'")
            ).scalar(),
            "duplicates": c.execute(
                text("SELECT coalesce(sum(duplicate_executions), 0) FROM jobs")
            ).scalar(),
            "deliveries": c.execute(text("SELECT count(*) FROM webhook_deliveries")).scalar(),
            "waiting": rows(
                "SELECT j.queue, j.model, count(*), sum(t.n_items) FROM tasks t "
                "JOIN jobs j ON j.id = t.job_id WHERE t.state IN ('pending', 'queued') "
                "GROUP BY j.queue, j.model"
            ),
            "workers": rows(
                "SELECT model, count(*) FROM workers WHERE seen_at > now() - interval '5 seconds' "
                "GROUP BY model"
            ),
        }


def test_metrics_need_an_admin_key(api_server: ApiServer) -> None:
    with api_server.http(None) as http:
        assert http.get("/metrics").status_code == 401
    with api_server.http("alice") as http:
        r = http.get("/metrics")
        assert r.status_code == 403 and "admin API key" in r.json()["error"]["message"]


def test_metrics_equal_sql_after_a_job_with_failures(api_server: ApiServer) -> None:
    store = open_store(api_server.env["GENQUEUE_DATABASE_URL"])
    if "metrics" not in api_server.keys:
        api_server.keys["metrics"] = tenants.create_key(store, "metrics")[1]
    spec = {
        "model": "gpt2",
        "template": "Count: {n}",
        "params": {"max_new_tokens": 3},
        "records": [{"n": str(i)} for i in range(12)] + [{"n": "word " * 700}] * 2,
    }
    with api_server.http("metrics") as http:
        job_id = http.post("/v1/jobs", json=spec).json()["job_id"]
        deadline = time.monotonic() + 120
        while http.get(f"/v1/jobs/{job_id}").json()["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # Queued for a model no worker serves: it stays in the queue depth.
        idle = http.post(
            "/v1/jobs", json={"model": "idle", "records": [{"prompt": f"w{i}"} for i in range(7)]}
        ).json()["job_id"]
    # Other tests' jobs may still be moving: compare a scrape with SQL read before and
    # after it, once both reads agree.
    for _ in range(20):
        before = _sql(store)
        scraped = _scrape(api_server)
        if _sql(store) == before:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the deployment never stood still for one scrape")
    store.dispose()

    def value(name: str, **labels: str) -> float:
        return scraped.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    for (state,), n in before["jobs"].items():
        assert value("genqueue_jobs", state=state) == n, state
    assert sum(scraped["genqueue_jobs"].values()) == sum(before["jobs"].values())
    for (model, status), n in before["items"].items():
        assert value("genqueue_items", model=model, status=status) == n, (model, status)
    assert any(status == "failed" and n >= 2 for (_, status), n in before["items"].items())
    for (model,), n in before["prompt"].items():
        assert value("genqueue_prompt_tokens_total", model=model) == n
        assert (
            value("genqueue_generated_tokens_total", model=model) == before["generated"][(model,)]
        )
    assert value("genqueue_lease_expiries_total") == before["expiries"]
    assert value("genqueue_duplicate_executions_total") == before["duplicates"]
    deliveries = scraped.get("genqueue_webhook_deliveries_total", {})
    assert sum(deliveries.values()) == before["deliveries"]
    live = {dict(k)["model"]: v for k, v in scraped["genqueue_workers_live"].items()}
    assert {m: n for (m,), n in before["workers"].items()} == live and len(live) == 2

    # The micro-batch histogram: one observation per stored micro-batch, cumulative.
    gpt2 = next(m for (m, _), _n in before["items"].items() if m.endswith("tiny-gpt2"))
    count = value("genqueue_microbatch_seconds_count", model=gpt2)
    assert count == before["batches"][(gpt2,)] > 0
    bounds = [
        value("genqueue_microbatch_seconds_bucket", model=gpt2, le=repr(b)) for b in BATCH_BUCKETS
    ]
    assert bounds == sorted(bounds) and bounds[-1] <= count
    assert value("genqueue_microbatch_seconds_bucket", model=gpt2, le="+Inf") == count
    assert value("genqueue_microbatch_seconds_sum", model=gpt2) > 0
    for (queue, model, tasks), n_items in before["waiting"].items():
        assert value("genqueue_queue_depth_tasks", queue=queue, model=model) == tasks
        assert value("genqueue_queue_depth_items", queue=queue, model=model) == n_items
    unserved = queue_for(gpt2, "unserved")
    assert value("genqueue_queue_depth_items", queue=unserved, model=gpt2) >= 7
    with api_server.http("metrics") as http:
        http.post(f"/v1/jobs/{idle}/cancel")
