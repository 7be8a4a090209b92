"""One reconciler pass at a time (`tick`), on a real store and Redis: what it re-queues,
sends, rebuilds, expires, finalises and removes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from genqueue.broker import PRIORITY_SEP, PRIORITY_STEPS, redis_client
from genqueue.protocol import queue_for
from genqueue.scheduler.dispatch import Dispatcher
from genqueue.scheduler.reconciler import Reconciler
from genqueue.settings import Settings
from genqueue.storage import leases, status
from genqueue.storage.claims import Claim
from genqueue.storage.db import Store, utcnow
from genqueue.storage.models import Job, Task, TaskState
from genqueue.storage.results import write_results
from tests.storage.factories import finish, make_job, new_job, ok, task_ids

QUEUE = queue_for("reconciler-test-model")


@pytest.fixture
def reconciler(store: Store, redis_url: str) -> Iterator[Reconciler]:
    dispatcher = Dispatcher(redis_url)
    settings = Settings(lease_seconds=30, dispatch_grace_seconds=0, submit_stall_seconds=5)
    yield Reconciler(store, dispatcher, settings)
    dispatcher.close()


def top_priority_depth(redis_url: str) -> int:
    client = redis_client(redis_url)
    try:
        return int(client.llen(QUEUE))  # the list kombu pops first (priority 9)
    finally:
        client.close()


def test_unsent_tasks_are_sent_and_an_expired_lease_goes_first(
    store: Store, reconciler: Reconciler, redis_url: str
) -> None:
    job = make_job(store, n=6, chunk=2, queue=QUEUE, priority=1)
    first = task_ids(store, job.id)[0]
    report = reconciler.tick()
    assert report.sent == 3 and reconciler.dispatcher.depth(QUEUE) == 3
    assert top_priority_depth(redis_url) == 0  # priority 1: at the back
    claim = leases.claim_task(store, first, "dead-worker", lease_seconds=0.01, max_attempts=3)
    assert isinstance(claim, Claim)
    with store.session() as s:
        s.execute(update(Task).where(Task.id == first).values(lease_expires_at=utcnow()))
    report = reconciler.tick()
    assert report.requeued == 1 and report.sent == 1
    assert top_priority_depth(redis_url) == 1  # a killed worker's task jumps the queue
    assert reconciler.tick().sent == 0  # nothing twice


def test_a_broker_that_lost_everything_is_rebuilt_from_sql(
    store: Store, reconciler: Reconciler, redis_url: str
) -> None:
    job = make_job(store, n=8, chunk=2, queue=QUEUE)
    reconciler.tick()
    assert reconciler.dispatcher.depth(QUEUE) == 4
    client = redis_client(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    report = reconciler.tick()
    assert report.rebuilt == 4 and reconciler.dispatcher.depth(QUEUE) == 4
    assert status.view_job(store, job.id).job.state == "queued"


def test_an_emptied_queue_is_refilled_with_tasks_waiting_on_it(
    store: Store, reconciler: Reconciler, redis_url: str
) -> None:
    job = make_job(store, n=4, chunk=2, queue=QUEUE)
    reconciler.tick()
    client = redis_client(redis_url)
    try:  # messages gone (every priority list), the epoch key kept (no restart)
        client.delete(QUEUE, *(f"{QUEUE}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS))
    finally:
        client.close()
    assert reconciler.dispatcher.depth(QUEUE) == 0
    assert reconciler.tick().sent == 0  # sent recently: maybe still in flight
    with store.session() as s:
        old = utcnow() - timedelta(minutes=5)
        s.execute(update(Task).where(Task.job_id == job.id).values(enqueued_at=old))
    assert reconciler.tick().sent == 2 and reconciler.dispatcher.depth(QUEUE) == 2


def test_jobs_are_finalised_and_expired(store: Store, reconciler: Reconciler) -> None:
    done = make_job(store, n=2, chunk=2, queue=QUEUE)
    (tid,) = task_ids(store, done.id)
    claim = leases.claim_task(store, tid, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, Claim)
    write_results(store, claim, [ok(0), ok(1)])
    with store.session() as s:  # done, but its job not finalised (as if the worker died)
        s.execute(update(Task).where(Task.id == tid).values(state=TaskState.DONE.value))
    late = make_job(store, n=2, chunk=2, queue=QUEUE, deadline_at=utcnow() - timedelta(1))
    report = reconciler.tick()
    assert report.finalized == {done.id: "completed"}
    assert report.expired_jobs == [late.id]
    assert status.view_job(store, late.id).counts.expired == 2
    assert finish(store, claim, "done") == "done"  # the late worker changes nothing


def test_an_abandoned_submission_is_removed(store: Store, reconciler: Reconciler) -> None:
    alive, dead = new_job(store, queue=QUEUE), new_job(store, queue=QUEUE)
    with store.session() as s:
        old = utcnow() - timedelta(seconds=60)
        s.execute(update(Job).where(Job.id == dead.id).values(loaded_at=old))
    assert reconciler.tick().abandoned == [dead.id]
    with store.read() as s:
        assert s.get(Job, dead.id) is None and s.get(Job, alive.id) is not None
