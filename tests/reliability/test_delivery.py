"""Delivery: at-least-once messages, exactly-once results.

A task delivered twice runs once; a lease stolen from a frozen worker makes two workers
generate the same items, yet each item is stored once and the extra executions are
counted; a submitter that dies between commit and enqueue loses nothing; submitting
twice with one idempotency key creates one job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from genqueue.broker import queue_depth, redis_client
from genqueue.protocol import queue_for
from genqueue.scheduler.dispatch import Dispatcher
from genqueue.storage import dispatch
from genqueue.storage.models import Task, TaskState
from tests.reliability.cluster import MODEL, ClusterFactory, records, running_tasks, wait_for

pytestmark = pytest.mark.slow


def test_task_delivered_twice_runs_once(sqlite_url: str, make_cluster: ClusterFactory) -> None:
    """Every task's message is sent twice before any worker starts, and once more after
    the job is done: claims are atomic, so each task runs once and nothing is stored
    twice; late copies are refused and drained."""
    c = make_cluster(sqlite_url)
    job_id = c.submit(records(64), chunk_size=16)
    again = dispatch.queued_tasks(c.store, job_id=job_id)
    n = len(again)
    dispatcher = Dispatcher(c.settings.broker_url or "")
    try:
        dispatcher.send(c.store, again)
        broker = redis_client(c.settings.broker_url or "")
        assert queue_depth(broker, queue_for(MODEL)) == 2 * n
        c.start_workers(2)
        st = c.wait(job_id, timeout=60)
        assert st["state"] == "completed" and st["duplicate_executions"] == 0
        c.assert_exactly_once(job_id, 64)
        assert len(c.attempts(job_id)) == n  # one claim per task
        # A copy arriving after the task is done is refused, not run.
        dispatcher.send(c.store, [(t, q, p) for t, q, p in again])
        wait_for("the late copies to drain", lambda: queue_depth(broker, queue_for(MODEL)) == 0, 30)
        assert len(c.attempts(job_id)) == n
        assert c.client.status(job_id)["state"] == "completed"
        broker.close()
    finally:
        dispatcher.close()


def test_stolen_lease_stores_once_and_counts_duplicates(
    db_url: str, make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """Worker A is frozen (SIGSTOP) in the middle of a micro-batch for longer than its
    lease; the reconciler re-queues the task and idle worker B takes it over. When A
    wakes up it finishes its micro-batch and writes it, and both A and B generated
    those items: one row each is kept, the rest is counted as duplicate executions."""
    c = make_cluster(
        db_url, fault_env={"GQ_FAULT_DELAY": "0.02", "GQ_FAULT_LOG": str(tmp_path / "fault.log")}
    )
    c.start_workers(2)
    c.wait_workers_ready(2)
    job_id = c.submit_one_task(records(120))  # B idles until the task is stolen
    wait_for("20 results", lambda: c.status_counts(job_id)["succeeded"] >= 20, 30)
    (_, owner_a, pid_a) = wait_for("the task in progress", lambda: running_tasks(c, job_id), 10)[0]
    c.pause(pid_a)
    try:
        second = wait_for(
            "worker B to take the task over",
            lambda: [a for a in c.attempts(job_id) if a.number == 2 and a.items_written >= 16],
            timeout=20,
        )[0]
        assert second.worker != owner_a
    finally:
        os.kill(pid_a, signal.SIGCONT)
    st = c.wait(job_id, timeout=60)
    assert st["state"] == "completed", st
    lines = c.assert_exactly_once(job_id, 120)
    assert all(ln["status"] == "succeeded" for ln in lines)
    tries = c.attempts(job_id)
    first = next(a for a in tries if a.number == 1)
    # A noticed it lost the lease and stopped after the micro-batch it was in; its
    # attempt keeps the outcome the reconciler gave it, plus what A still wrote.
    wait_for(
        "A to write its last micro-batch",
        lambda: sum(a.duplicates for a in c.attempts(job_id)) >= 1,
        10,
    )
    assert c.attempts(job_id)[0].outcome == "lease_expired"
    dups = sum(a.duplicates for a in c.attempts(job_id))
    assert c.client.status(job_id)["duplicate_executions"] == dups
    assert sum(a.items_written for a in c.attempts(job_id)) == 120
    assert first.worker == owner_a


CRASHING_SUBMITTER = """
import os, signal, sys
from genqueue.client import Client
from genqueue.scheduler.dispatch import Dispatcher

def crash(self, store, tasks):  # the job is committed; the process dies before sending
    os.kill(os.getpid(), signal.SIGKILL)

Dispatcher.send = crash
Client(sys.argv[1], sys.argv[2]).submit(
    [{"prompt": f"p {i}"} for i in range(50)], kind="generate", model=sys.argv[3],
    chunk_size=10, max_new_tokens=4,
)
"""


def test_crash_between_commit_and_enqueue(db_url: str, make_cluster: ClusterFactory) -> None:
    """The submitting process is SIGKILLed after its job is committed and before any
    task reached Redis: the reconciler finds the unsent tasks in SQL and sends them."""
    c = make_cluster(db_url, reconciler=False)
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_SUBMITTER, db_url, c.settings.broker_url or "", MODEL],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (job,) = c.client.jobs()
    assert job["state"] == "queued" and job["counts"]["total"] == 50
    with c.store.session() as s:
        states = {t.state for t in s.query(Task).filter(Task.job_id == job["job_id"])}
    assert states == {TaskState.PENDING.value}
    broker = redis_client(c.settings.broker_url or "")
    assert queue_depth(broker, queue_for(MODEL)) == 0
    broker.close()
    c.start_workers(1)
    c.start_reconciler()
    st = c.wait(job["job_id"], timeout=60)
    assert st["state"] == "completed"
    c.assert_exactly_once(job["job_id"], 50)


def test_idempotency_key_creates_one_job(
    sqlite_url: str, make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """`genqueue submit --idempotency-key K`, twice at once and once more later (a
    client retrying after a timeout), creates one job and prints its id each time."""
    c = make_cluster(sqlite_url, reconciler=False)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(30)))
    env = {**os.environ, **c.env()}
    cmd = [sys.executable, "-m", "genqueue.cli", "submit", str(src), "--model", MODEL]
    cmd += ["--idempotency-key", "nightly-2024-06-01", "--json"]

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def job_id(proc: subprocess.Popen[str]) -> str:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        return str(json.loads(out)["job_id"])

    racing = [start(), start()]
    ids = [job_id(p) for p in racing]
    ids.append(job_id(start()))
    assert len(set(ids)) == 1
    jobs = c.client.jobs()
    assert [j["job_id"] for j in jobs] == ids[:1]
    assert jobs[0]["counts"]["total"] == 30
    # Its tasks went to Redis once, not once per submission.
    with c.store.session() as s:
        tasks = s.query(Task).filter(Task.job_id == ids[0]).count()
    broker = redis_client(c.settings.broker_url or "")
    assert queue_depth(broker, queue_for(MODEL)) == tasks
    broker.close()
