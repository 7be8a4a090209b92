"""Submission streams into work: the first windows of a large input are processed while
the rest is still read and stored. The job cannot end before every item is stored, and
a problem found later still rejects the whole job and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from genqueue.params import GenerationParams
from genqueue.scheduler.errors import InputError
from genqueue.scheduler.submit import JobSpec, submit_job
from genqueue.storage.db import as_utc
from genqueue.storage.models import Attempt, Item, Job, Result, Task
from tests.reliability.cluster import MODEL, Cluster, ClusterFactory, records, wait_for

pytestmark = pytest.mark.slow


def spec() -> JobSpec:
    # Windows of 32 items, two tasks each: the first tasks go out after 32 lines.
    return JobSpec(
        kind="generate",
        model=MODEL,
        params=GenerationParams(max_new_tokens=8),
        planning_window=32,
        min_tasks_per_window=2,
    )


def claimed(c: Cluster) -> int:
    with c.store.read() as s:
        return int(s.scalar(select(func.count()).select_from(Attempt)) or 0)


def feed(
    c: Cluster, head: list[str], tail: list[str]
) -> tuple[threading.Thread, Callable[[], float], int]:
    """A pipe that gives the submitter `head`, then, once a worker has claimed a task,
    `tail`; returns the feeding thread, when the tail was written, and the read end."""
    r, w = os.pipe()
    wrote_tail: list[float] = []

    def run() -> None:
        with os.fdopen(w, "w") as out:
            out.write("".join(head))
            out.flush()
            wait_for("a task claimed while the input is still open", lambda: claimed(c) > 0, 30)
            wrote_tail.append(time.time())
            out.write("".join(tail))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, lambda: wrote_tail[0], r


def lines(recs: list[dict[str, object]]) -> list[str]:
    return [json.dumps(r) + "\n" for r in recs]


def test_workers_start_on_the_first_windows_while_the_rest_is_read(
    sqlite_url: str, make_cluster: ClusterFactory
) -> None:
    c = make_cluster(sqlite_url)
    c.start_workers(1)
    c.wait_workers_ready(1)
    recs = records(200)
    thread, tail_at, r = feed(c, lines(recs[:64]), lines(recs[64:]))
    with os.fdopen(r, "rb") as src:
        done = submit_job(c.store, c.client.dispatcher, src, spec(), fmt="jsonl", input_name="pipe")
    thread.join(5)
    st = c.wait(done.job_id, timeout=60)
    assert st["state"] == "completed" and st["counts"]["succeeded"] == 200
    lines_out = c.assert_exactly_once(done.job_id, 200)
    assert [ln["output"] for ln in lines_out[:2]] == ["item 0", "item 1 word"]
    with c.store.read() as s:
        first_claim = s.scalar(select(func.min(Attempt.started_at)))
    assert first_claim is not None
    assert as_utc(first_claim).timestamp() < tail_at()  # type: ignore[union-attr]


def test_a_problem_found_after_work_started_still_rejects_everything(
    sqlite_url: str, make_cluster: ClusterFactory
) -> None:
    c = make_cluster(sqlite_url)
    c.start_workers(1)
    c.wait_workers_ready(1)
    pid = next(iter(c.worker_pids().values()))
    recs = records(200)
    tail = [*lines(recs[64:100]), '{"text": "no prompt here"}\n', *lines(recs[100:])]
    thread, _, r = feed(c, lines(recs[:64]), tail)
    with os.fdopen(r, "rb") as src, pytest.raises(InputError) as err:
        submit_job(c.store, c.client.dispatcher, src, spec(), fmt="jsonl", input_name="pipe")
    thread.join(5)
    assert "line 101" in str(err.value) and "prompt" in str(err.value)
    time.sleep(1.0)  # a worker that was mid-task finishes and drops its results
    with c.store.read() as s:
        for model in (Job, Task, Item, Result, Attempt):
            assert s.scalar(select(func.count()).select_from(model)) == 0, model
    # The worker never noticed more than a vanished task, and takes the next job.
    assert next(iter(c.worker_pids().values())) == pid
    job = c.submit(records(20))
    assert c.wait(job, timeout=60)["state"] == "completed"


KILLED_MID_LOAD = """
import os, signal, sys
from genqueue.client import Client
from genqueue.params import GenerationParams
from genqueue.scheduler.dispatch import Dispatcher
from genqueue.scheduler.submit import JobSpec, submit_job

real, calls = Dispatcher.send, []

def send(self, store, tasks):
    calls.append(1)
    if len(calls) == 2:  # the first window's tasks are out; the submitter dies now
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, store, tasks)

Dispatcher.send = send
client = Client(sys.argv[1], sys.argv[2])
spec = JobSpec(kind="generate", model=sys.argv[3], params=GenerationParams(max_new_tokens=4),
               planning_window=32, min_tasks_per_window=2)
with open(sys.argv[4], "rb") as src:
    submit_job(client.store, client.dispatcher, src, spec, fmt="jsonl")
"""


def test_a_submission_abandoned_mid_load_is_removed(
    db_url: str, make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """The submitter is SIGKILLed after its first window went out (workers are on it)
    and before the rest of the input was stored. The half-loaded job can never be
    completed; once it has been silent for `submit_stall_seconds` the reconciler
    removes it and everything under it."""
    c = make_cluster(db_url, submit_stall_seconds=2.0)
    c.start_workers(1)
    c.wait_workers_ready(1)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(lines(records(200))))
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_MID_LOAD, db_url, c.settings.broker_url or "", MODEL, src],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert c.client.jobs() == []  # never visible: it was still being submitted

    def rows() -> int:
        with c.store.read() as s:
            return sum(
                int(s.scalar(select(func.count()).select_from(m)) or 0)
                for m in (Job, Task, Item, Result, Attempt)
            )

    assert rows() > 0
    wait_for("the abandoned submission to be removed", lambda: rows() == 0, 30)
    job = c.submit(records(20))  # the worker carries on
    assert c.wait(job, timeout=60)["state"] == "completed"
