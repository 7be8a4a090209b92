"""Claims, leases and attempts: who may work on a task, and when an attempt counts."""

from __future__ import annotations

import time

from sqlalchemy import select

from genqueue.storage import leases, lifecycle, recovery, status
from genqueue.storage.claims import Claim, ClaimRefused
from genqueue.storage.completion import complete_task
from genqueue.storage.db import Store
from genqueue.storage.models import Attempt, Task
from genqueue.storage.results import iter_results, write_results
from tests.storage.factories import finish, make_job, ok, task_ids


def test_claim_write_finish_completes_job(store: Store) -> None:
    job = make_job(store, n=10, chunk=4)
    tids = task_ids(store, job.id)
    assert len(tids) == 3
    for tid in tids:
        claim = leases.claim_task(store, tid, "w1", lease_seconds=30, max_attempts=3)
        assert isinstance(claim, Claim)
        assert claim.attempt == 1
        written, dups = write_results(store, claim, [ok(i.idx) for i in claim.items])
        assert (written, dups) == (len(claim.items), 0)
        assert finish(store, claim, "done") == "done"
    lifecycle.finalize_job(store, job.id)  # a no-op when its last completion ended it
    assert status.view_job(store, job.id).job.state == "completed"
    view = status.view_job(store, job.id)
    assert view.counts.succeeded == 10 and view.counts.pending == 0
    rows = list(iter_results(store, job.id))
    assert [r.index for r in rows] == list(range(10))
    assert rows[0].to_record()["usage"] == {"prompt_tokens": 3, "completion_tokens": 4}


def test_live_lease_cannot_be_claimed(store: Store) -> None:
    job = make_job(store, n=2, chunk=2)
    (tid,) = task_ids(store, job.id)
    assert isinstance(leases.claim_task(store, tid, "w1", lease_seconds=30, max_attempts=3), Claim)
    refused = leases.claim_task(store, tid, "w2", lease_seconds=30, max_attempts=3)
    assert isinstance(refused, ClaimRefused) and refused.reason == "leased"


def test_a_held_task_is_charged_an_attempt_only_when_its_work_begins(store: Store) -> None:
    """A worker holds its next task while the model finishes the current one. If the
    worker dies then (a poison item in the current task), the held task did no work and
    keeps its attempts; otherwise its attempt begins in the commit that completes the
    task before it."""
    job = make_job(store, n=4, chunk=2)
    first, second = task_ids(store, job.id)

    def attempts(tid: int) -> int:
        with store.read() as s:
            return int(s.scalar(select(Task.attempts).where(Task.id == tid)) or 0)

    held = leases.claim_task(store, second, "w", lease_seconds=0.05, max_attempts=1, begin=False)
    assert isinstance(held, Claim) and not held.begun
    time.sleep(0.1)  # the worker died while the task waited
    assert recovery.recover_expired(store, max_attempts=1) == [second]
    assert attempts(second) == 0  # not charged: with max_attempts=1 it is still claimable

    current = leases.claim_task(store, first, "w", lease_seconds=30, max_attempts=1)
    held = leases.claim_task(store, second, "w", lease_seconds=30, max_attempts=1, begin=False)
    assert isinstance(current, Claim) and isinstance(held, Claim)
    assert (attempts(first), attempts(second)) == (1, 0)
    done = complete_task(store, current, [ok(0), ok(1)], outcome="done", begin_next=held)
    assert done.task_state == "done" and done.began_next is True
    assert attempts(second) == 1
    with store.read() as s:
        tries = s.scalars(select(Attempt).where(Attempt.task_id == second)).all()
    assert [(t.outcome, t.began_at is not None) for t in tries] == [
        ("lease_expired", False),
        (None, True),
    ]
    assert complete_task(store, held, [ok(2), ok(3)], outcome="done").job_state == "completed"


def test_starting_a_held_attempt_twice_counts_it_once(store: Store) -> None:
    job = make_job(store, n=2, chunk=2)
    (tid,) = task_ids(store, job.id)
    held = leases.claim_task(store, tid, "w", lease_seconds=30, max_attempts=3, begin=False)
    assert isinstance(held, Claim)
    assert leases.begin_attempt(store, held) and leases.begin_attempt(store, held)  # a retry
    with store.read() as s:
        assert s.scalar(select(Task.attempts).where(Task.id == tid)) == 1
