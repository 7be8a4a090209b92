"""Workers that die: SIGKILL mid-task (the worker process, and its supervisor), and a
graceful SIGTERM. The lease expires, the reconciler re-queues the task, another worker
finishes it; every item ends with exactly one stored result."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime

import psutil
import pytest
from sqlalchemy import select

from genqueue.storage.models import Task, TaskState
from genqueue.worker.supervisor import STABLE_SECONDS, Supervisor, WorkerSpec
from genqueue.workeropts import WorkerOptions
from tests.reliability.cluster import (
    FAULTY,
    MODEL,
    Cluster,
    ClusterFactory,
    at,
    now_utc,
    records,
    running_tasks,
    wait_for,
)

pytestmark = pytest.mark.slow


@dataclass
class Kill:
    at: datetime
    worker: str
    pid: int


def kill_worker_mid_task(c: Cluster, job_id: str, rng: random.Random) -> Kill:
    """SIGKILL a worker process while it holds a task's lease."""
    _, owner, pid = rng.choice(
        wait_for("a task in progress", lambda: running_tasks(c, job_id), 30, 0.02)
    )
    when = now_utc()
    os.kill(pid, signal.SIGKILL)
    return Kill(when, owner, pid)


def recovery(c: Cluster, job_id: str, kill: Kill) -> list[tuple[float, float]]:
    """(kill → lease recovered, kill → task re-claimed) in seconds, from the attempts
    table, for each task the killed worker held: the one it generated and the one it
    had claimed ahead (prefetch). Empty when the kill landed between two tasks."""
    tries = c.attempts(job_id)
    killed = [
        a
        for a in tries
        if a.worker == kill.worker and at(a.started_at) <= kill.at and a.outcome == "lease_expired"
    ]
    assert len(killed) <= 2, killed  # at most the running task and the prefetched one
    times = []
    for lost in killed:
        later = [a for a in tries if a.task_id == lost.task_id and a.id > lost.id]
        assert later, f"task {lost.task_id} was never claimed again"
        times.append(
            (
                (at(lost.finished_at) - kill.at).total_seconds(),
                (at(later[0].started_at) - kill.at).total_seconds(),
            )
        )
    return times


def test_sigkill_workers_and_supervisor_mid_job(pg_url: str, make_cluster: ClusterFactory) -> None:
    """A 2,000-item job on `genqueue worker --processes 2`, with five SIGKILLs at random
    moments: four kill a worker process in the middle of a task, one kills the
    supervisor (its children get SIGTERM and release their tasks; a new supervisor is
    started). The job ends `completed` with exactly one result per item."""
    seed = int(os.environ.get("GQ_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    c = make_cluster(pg_url, fault_env={"GQ_FAULT_DELAY": "0.005"})
    supervisor = c.start_cli_workers(2)
    c.wait_workers_ready(2)
    job_id = c.submit(records(2000), chunk_size=32)
    kills: list[Kill] = []
    released: list[float] = []
    t0 = time.monotonic()
    for k in range(5):
        time.sleep(rng.uniform(0.2, 1.0))
        if k != 2:
            kills.append(kill_worker_mid_task(c, job_id, rng))
            continue
        # The supervisor: PDEATHSIG hands each child a SIGTERM, so they release their
        # tasks (after the micro-batch in flight) and exit on their own.
        wait_for("a task in progress", lambda: running_tasks(c, job_id), 30, 0.02)
        children = psutil.Process(supervisor.pid).children()
        victims = {n for n, pid in c.worker_pids().items() if pid in {p.pid for p in children}}
        t_kill, sup_kill_at = time.monotonic(), now_utc()
        supervisor.kill()
        supervisor.wait(timeout=10)
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"orphaned worker processes {alive} (seed {seed})"
        released.append(time.monotonic() - t_kill)
        supervisor = c.start_cli_workers(2)
    st = c.wait(job_id, timeout=120)
    elapsed = time.monotonic() - t0
    assert st["state"] == "completed", (seed, st)
    assert st["counts"]["succeeded"] == 2000
    lines = c.assert_exactly_once(job_id, 2000)
    assert all(ln["status"] == "succeeded" for ln in lines)
    assert [ln["output"] for ln in lines[:3]] == ["item 0", "item 1 word", "item 2 word word"]

    tries = c.attempts(job_id)
    outcomes = [a.outcome for a in tries]
    assert None not in outcomes  # no attempt left open
    # Released tasks are continued, never redone: the items a task stored before a kill
    # or stop are not generated again, so duplicates stay rare (a micro-batch at most).
    assert sum(a.items_written for a in tries) == 2000
    # The tasks in flight when the supervisor died were released, not abandoned.
    at_sup_kill = [
        a
        for a in tries
        if a.worker in victims and at(a.started_at) <= sup_kill_at <= at(a.finished_at)
    ]
    assert victims and at_sup_kill, "no task was in flight when the supervisor died"
    assert {a.outcome for a in at_sup_kill} <= {"stopped", "done"}, [
        (a.worker, a.outcome) for a in at_sup_kill
    ]
    times = [r for k in kills for r in recovery(c, job_id, k)]
    assert len(times) >= 2, f"only {len(times)} kills landed mid-task (seed {seed})"
    lease = c.settings.lease_seconds
    for to_requeue, _ in times:
        assert to_requeue < lease + 3 * c.settings.reconcile_interval + 1
    print(
        f"\n[kill test] seed={seed} elapsed={elapsed:.1f}s "
        f"duplicates={st['duplicate_executions']} attempts={len(tries)} "
        f"outcomes={ {o: outcomes.count(o) for o in set(outcomes)} }\n"
        f"  kill→requeued: {[round(a, 2) for a, _ in times]} s\n"
        f"  kill→re-claimed: {[round(b, 2) for _, b in times]} s\n"
        f"  supervisor SIGKILL→children exited: {[round(x, 2) for x in released]} s"
    )


def test_sigterm_releases_the_task_within_a_bound(
    sqlite_url: str, make_cluster: ClusterFactory
) -> None:
    """SIGTERM to a worker process in the middle of a long task: it stops after the
    micro-batch in flight, releases the task (outcome `stopped`) and exits within a
    bound; another worker continues with only the items still missing, so nothing is
    done twice."""
    c = make_cluster(sqlite_url, fault_env={"GQ_FAULT_DELAY": "0.02"})
    sup = c.start_workers(1)
    c.wait_workers_ready(1)
    # One task of 200 items at 20 ms each (~4 s); micro-batches of 8 (0.16 s).
    job_id = c.submit_one_task(records(200))
    wait_for(
        "some results",
        lambda: c.status_counts(job_id)["succeeded"] >= 40,
        timeout=30,
    )
    child = sup.children[0]
    assert child is not None
    t0 = time.monotonic()
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=10)
    took = time.monotonic() - t0
    assert took < 5, f"worker took {took:.1f}s to stop"
    assert child.returncode == 0
    (first,) = c.attempts(job_id)
    assert first.outcome == "stopped" and 40 <= first.items_written < 200
    with c.store.session() as s:
        task = s.scalars(select(Task).where(Task.job_id == job_id)).one()
        assert task.state == TaskState.QUEUED.value and task.lease_owner is None
    sup.stopping = True  # no automatic restart: a fresh worker takes over
    c.start_workers(1)
    st = c.wait(job_id, timeout=60)
    assert st["state"] == "completed" and st["duplicate_executions"] == 0
    c.assert_exactly_once(job_id, 200)
    first, second = c.attempts(job_id)
    assert second.outcome == "done"
    assert first.items_written + second.items_written == 200
    assert second.number == 2


def test_restart_backoff_is_for_crash_loops_only() -> None:
    """A process that dies young (a crash loop) is restarted with a growing delay; one
    that had run for a while (killed, OOM, a poison item) starts over at the shortest
    delay, however many times that happened before."""
    sup = Supervisor(
        WorkerSpec(options=WorkerOptions(model=MODEL, engine=FAULTY, device="cpu"), processes=1)
    )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sup.children[0] = dead

    def died(after: float) -> float:
        """Report a death `after` seconds of life; returns the restart delay chosen."""
        sup.started[0] = time.monotonic() - after
        sup.next_start[0] = 0.0
        sup.poll()
        return sup.next_start[0] - time.monotonic()

    young = [died(after=1) for _ in range(4)]
    assert [round(d) for d in young] == [1, 2, 4, 8]
    assert round(died(after=STABLE_SECONDS + 1)) == 1
    assert round(died(after=1)) == 2
