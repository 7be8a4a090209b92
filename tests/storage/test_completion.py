"""Completing a task in one transaction."""

from __future__ import annotations

from sqlalchemy import select

from genqueue.storage import leases, status
from genqueue.storage.claims import Claim
from genqueue.storage.completion import complete_task
from genqueue.storage.db import Store
from genqueue.storage.models import Attempt
from tests.storage.factories import make_job, ok, task_ids


def test_complete_task_writes_finishes_and_ends_the_job_in_one_transaction(store: Store) -> None:
    job = make_job(store, n=6, chunk=3)
    first, last = task_ids(store, job.id)
    for tid in (first, last):
        claim = leases.claim_task(store, tid, "w1", lease_seconds=30, max_attempts=3)
        assert isinstance(claim, Claim)
        done = complete_task(
            store, claim, [ok(i.idx) for i in claim.items], outcome="done", engine="dry-run"
        )
        assert (done.written, done.duplicates, done.task_state) == (3, 0, "done")
        # Only the job's last task ends the job, in the same commit as its results.
        assert done.job_state == ("completed" if tid == last else None)
        assert status.view_job(store, job.id).job.state == (
            "completed" if tid == last else "running"
        )
    view = status.view_job(store, job.id)
    assert view.counts.succeeded == 6 and view.job.engine == "dry-run"
    with store.session() as s:
        tries = s.scalars(select(Attempt).where(Attempt.job_id == job.id)).all()
    assert [(a.outcome, a.items_written) for a in tries] == [("done", 3), ("done", 3)]


def test_complete_task_releases_a_partial_task(store: Store) -> None:
    job = make_job(store, n=4, chunk=4)
    (tid,) = task_ids(store, job.id)
    claim = leases.claim_task(store, tid, "w1", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, Claim)
    done = complete_task(store, claim, [ok(0), ok(1)], outcome="stopped")
    assert (done.written, done.task_state, done.job_state) == (2, "queued", None)
    again = leases.claim_task(store, tid, "w2", lease_seconds=30, max_attempts=3)
    assert isinstance(again, Claim)
    assert [i.idx for i in again.items] == [2, 3]  # only what still lacks a result
