"""Services that go away mid-job: Redis loses everything, PostgreSQL restarts, the broker
is unreachable for 20 s. SQL is the source of truth, so the job completes with every
item stored once, and the workers that lived through it are the ones that finish it."""

from __future__ import annotations

import time

import pytest

from genqueue.scheduler.dispatch import EPOCH_KEY
from tests.reliability.cluster import ClusterFactory, depth, records, wait_for
from tests.services import PrivatePostgres

pytestmark = pytest.mark.slow


def test_redis_loses_everything_mid_job(sqlite_url: str, make_cluster: ClusterFactory) -> None:
    """`SHUTDOWN NOSAVE` and a restart, empty, while tasks wait in Redis: the reconciler
    sees its epoch key gone and re-sends every queued task from SQL at once (not the
    empty-queue fallback, which waits max(60 s, 2 x lease)), and the workers,
    reconnected by themselves, finish the job."""
    c = make_cluster(sqlite_url, fault_env={"GQ_FAULT_DELAY": "0.01"})
    assert c.redis is not None and c.reconciler is not None
    sup = c.start_workers(2)
    c.wait_workers_ready(2)
    job_id = c.submit(records(500), chunk_size=16)
    wait_for("some progress", lambda: c.status_counts(job_id)["succeeded"] >= 100, 30)
    waiting = depth(c.redis.url)
    assert waiting > 10  # messages that only Redis holds
    epoch = c.redis.client().get(EPOCH_KEY)
    assert epoch is not None
    c.redis.shutdown_nosave()
    c.redis.start()
    restarted = time.monotonic()
    # The reconciler may already have noticed and stamped a new epoch; never the old one.
    assert c.redis.client().get(EPOCH_KEY) != epoch
    rec = c.reconciler
    rebuilt = wait_for(
        "the reconciler to rebuild the queue from SQL",
        lambda: [(t - restarted, r.rebuilt) for t, r in rec.passes if t > restarted and r.rebuilt],
        timeout=10,
    )
    took, n = rebuilt[0]
    assert n >= waiting - 2 * 2  # every task still queued (a worker may hold two)
    st = c.wait(job_id, timeout=45)  # well inside the 60 s the fallback would take
    assert st["state"] == "completed", st
    assert all(ln["status"] == "succeeded" for ln in c.assert_exactly_once(job_id, 500))
    assert sup.restarts == [0, 0]  # the workers rode it out
    print(f"\n[redis loss] rebuilt {n} tasks {took:.1f}s after the restart")


def test_postgres_restart_mid_job(
    private_pg: PrivatePostgres, make_cluster: ClusterFactory
) -> None:
    """Mid-job, PostgreSQL restarts (every connection cut). Workers and the reconciler
    retry with backoff and reconnect; nothing hangs, no worker process dies, no item is
    lost or stored twice. The server is the test's own, so no other test notices."""
    c = make_cluster(private_pg.url, fault_env={"GQ_FAULT_DELAY": "0.01"})
    sup = c.start_workers(2)
    c.wait_workers_ready(2)
    job_id = c.submit(records(1000), chunk_size=16)
    wait_for("some progress", lambda: c.status_counts(job_id)["succeeded"] >= 100, 30)
    took = private_pg.restart()
    during = c.status_counts(job_id)["succeeded"]
    assert during < 1000, "the job finished during the restart; make it longer"
    st = c.wait(job_id, timeout=120)
    assert st["state"] == "completed", st
    assert all(ln["status"] == "succeeded" for ln in c.assert_exactly_once(job_id, 1000))
    assert sup.restarts == [0, 0]
    print(f"\n[outage test] PostgreSQL restart took {took:.1f}s; done before it: {during}")


def test_broker_outage_mid_job(pg_url: str, make_cluster: ClusterFactory) -> None:
    """Mid-job, the broker is down for 20 s (a persistent Redis, killed and started
    again). Workers retry with backoff and reconnect; nothing hangs, no worker process
    dies, no item is lost or stored twice."""
    c = make_cluster(pg_url, persistent_broker=True, fault_env={"GQ_FAULT_DELAY": "0.01"})
    broker = c.redis
    assert broker is not None
    sup = c.start_workers(2)
    c.wait_workers_ready(2)
    job_id = c.submit(records(1500), chunk_size=16)
    wait_for("some progress", lambda: c.status_counts(job_id)["succeeded"] >= 100, 30)
    broker.kill()
    time.sleep(20)
    during = c.status_counts(job_id)["succeeded"]
    assert during < 1500, "the job finished during the outage; make it longer"
    broker.start()
    st = c.wait(job_id, timeout=120)
    assert st["state"] == "completed", st
    lines = c.assert_exactly_once(job_id, 1500)
    assert all(ln["status"] == "succeeded" for ln in lines)
    assert sup.restarts == [0, 0]
    print(f"\n[outage test] done when the broker came back: {during}")
