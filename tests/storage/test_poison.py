"""Poison isolation: split until the item to blame is alone."""

from __future__ import annotations

import time

from genqueue.storage import leases, lifecycle, recovery, status
from genqueue.storage.claims import Claim, ClaimRefused
from genqueue.storage.completion import complete_task
from genqueue.storage.db import Store
from genqueue.storage.results import iter_results, write_results
from tests.storage.factories import finish, make_job, ok, task_ids


def test_poison_task_is_split_then_the_item_fails(store: Store) -> None:
    job = make_job(store, n=4, chunk=4)
    (tid,) = task_ids(store, job.id)
    pending = [tid]
    failed_items: set[int] = set()
    claims_of_2 = 0
    for _ in range(20):  # every claim "crashes" on item 2
        if not pending:
            break
        t = pending.pop()
        got = leases.claim_task(store, t, "w", lease_seconds=0.001, max_attempts=2)
        if isinstance(got, ClaimRefused):
            pending.extend(got.new_tasks)
            continue
        claims_of_2 += any(i.idx == 2 for i in got.items)
        good = [ok(i.idx) for i in got.items if i.idx != 2]
        if len(got.items) > 1:
            time.sleep(0.01)
            pending.extend(recovery.recover_expired(store, max_attempts=2) or [t])
            continue
        write_results(store, got, good)
        finish(store, got, "done") if good else time.sleep(0.01)
        if not good:
            pending.extend(recovery.recover_expired(store, max_attempts=2) or [t])
    rows = {r.index: r for r in iter_results(store, job.id)}
    failed_items = {i for i, r in rows.items() if r.status == "failed"}
    assert failed_items == {2}
    assert rows[2].error is not None and rows[2].error.code == "attempts_exhausted"
    # Its attempts are those of every task it went through (the original and the splits).
    assert claims_of_2 == 6
    assert f"stopped its worker {claims_of_2} time(s)" in rows[2].error.message
    assert sorted(rows) == [0, 1, 2, 3]
    lifecycle.finalize_job(store, job.id)  # a no-op when its last completion ended it
    assert status.view_job(store, job.id).job.state == "completed_with_errors"


def test_a_split_task_sees_results_its_parent_s_late_worker_wrote(store: Store) -> None:
    """A worker loses the lease of a task that is then split (its attempts ran out),
    but finishes its micro-batch late and writes results under the old task. The new
    tasks must not generate those items again."""
    job = make_job(store, n=4, chunk=4)
    (tid,) = task_ids(store, job.id)
    late = leases.claim_task(store, tid, "slow", lease_seconds=0.05, max_attempts=1)
    assert isinstance(late, Claim)
    time.sleep(0.1)
    halves = recovery.recover_expired(store, max_attempts=1)
    assert len(halves) == 2  # split: the task used its only attempt
    assert write_results(store, late, [ok(i) for i in range(4)]) == (4, 0)  # the late write
    for half in halves:
        claim = leases.claim_task(store, half, "w", lease_seconds=30, max_attempts=1)
        assert isinstance(claim, Claim)
        assert claim.items == []  # nothing left to generate
        assert complete_task(store, claim, [], outcome="done").task_state == "done"
    view = status.view_job(store, job.id)
    assert view.job.state == "completed" and view.counts.succeeded == 4
    assert view.job.duplicate_executions == 0
