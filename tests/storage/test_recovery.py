"""Recovering tasks whose lease expired."""

from __future__ import annotations

import time

from sqlalchemy import select

from genqueue.storage import leases, recovery, status
from genqueue.storage.claims import Claim
from genqueue.storage.completion import complete_task
from genqueue.storage.db import Store
from genqueue.storage.models import Attempt
from genqueue.storage.results import write_results
from tests.storage.factories import make_job, ok, task_ids


def test_expired_lease_is_requeued_and_partial_work_kept(store: Store) -> None:
    job = make_job(store, n=4, chunk=4)
    (tid,) = task_ids(store, job.id)
    claim = leases.claim_task(store, tid, "w1", lease_seconds=0.01, max_attempts=3)
    assert isinstance(claim, Claim)
    write_results(store, claim, [ok(0), ok(1)])  # then the worker dies
    time.sleep(0.05)
    assert recovery.recover_expired(store, max_attempts=3) == [tid]
    again = leases.claim_task(store, tid, "w2", lease_seconds=30, max_attempts=3)
    assert isinstance(again, Claim)
    assert [i.idx for i in again.items] == [2, 3]  # finished items are not redone
    assert again.attempt == 2


def test_a_worker_that_lost_its_lease_keeps_the_attempt_outcome(store: Store) -> None:
    """A frozen worker's lease expires and another takes the task. When the first wakes
    up and finishes, its results are counted (duplicates where the other already wrote)
    but the task stays the new holder's, and its attempt keeps `lease_expired`."""
    job = make_job(store, n=4, chunk=4)
    (tid,) = task_ids(store, job.id)
    a = leases.claim_task(store, tid, "A", lease_seconds=0.05, max_attempts=3)
    assert isinstance(a, Claim)
    time.sleep(0.1)
    assert recovery.recover_expired(store, max_attempts=3) == [tid]
    b = leases.claim_task(store, tid, "B", lease_seconds=30, max_attempts=3)
    assert isinstance(b, Claim)
    assert write_results(store, b, [ok(0), ok(1)]) == (2, 0)
    late = complete_task(store, a, [ok(i) for i in range(4)], outcome="stopped")
    assert (late.written, late.duplicates) == (2, 2)
    assert late.task_state == "running"  # B's lease: B decides
    assert complete_task(store, b, [ok(2), ok(3)], outcome="done").task_state == "done"
    with store.session() as s:
        tries = {t.worker: t for t in s.scalars(select(Attempt).where(Attempt.job_id == job.id))}
    assert tries["A"].outcome == "lease_expired"
    assert (tries["A"].items_written, tries["A"].duplicates) == (2, 2)
    assert (tries["B"].outcome, tries["B"].items_written, tries["B"].duplicates) == ("done", 2, 2)
    view = status.view_job(store, job.id)
    assert view.job.state == "completed" and view.job.duplicate_executions == 4
    assert view.counts.succeeded == 4
