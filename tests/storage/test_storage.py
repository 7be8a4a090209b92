"""The SQL store on SQLite and PostgreSQL: schema, leases, idempotent results, lifecycle."""

from __future__ import annotations

import time
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from genqueue.storage import jobs, leases
from genqueue.storage.completion import complete_task
from genqueue.storage.db import Store
from genqueue.storage.errors import StorageError
from genqueue.storage.models import Attempt, Base, Job, ResultStatus, Task
from genqueue.storage.results import NewResult, iter_results, write_results


def new_job(store: Store, chunk: int = 4, **fields: Any) -> Job:
    """A job still being submitted (no items yet)."""
    job = jobs.create_job(
        store,
        kind="generate",
        model="m",
        queue="q",
        params={},
        chunk_size=chunk,
        priority=5,
        meta={},
        options={},
        **fields,
    )
    assert isinstance(job, Job)
    return job


def make_job(store: Store, n: int = 10, chunk: int = 4, **fields: Any) -> Job:
    job = new_job(store, chunk, **fields)
    items = [jobs.NewItem(line=i + 1, custom_id=f"c{i}", prompt=f"p{i}") for i in range(n)]
    plan = [list(range(i, min(n, i + chunk))) for i in range(0, n, chunk)]
    jobs.add_chunk(store, job, 0, items, plan)
    jobs.open_job(store, job.id, n)
    return job


def task_ids(store: Store, job_id: str) -> list[int]:
    with store.session() as s:
        return [t.id for t in s.query(Task).filter_by(job_id=job_id).order_by(Task.id)]


def ok(idx: int, text: str = "out") -> NewResult:
    return NewResult(
        idx=idx,
        status=ResultStatus.SUCCEEDED,
        output=text,
        finish_reason="length",
        prompt_tokens=3,
        completion_tokens=4,
    )


def test_migrations_match_models(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_claim_write_finish_completes_job(store: Store) -> None:
    job = make_job(store, n=10, chunk=4)
    tids = task_ids(store, job.id)
    assert len(tids) == 3
    for tid in tids:
        claim = leases.claim_task(store, tid, "w1", lease_seconds=30, max_attempts=3)
        assert isinstance(claim, leases.Claim)
        assert claim.attempt == 1
        written, dups = write_results(store, claim, [ok(i.idx) for i in claim.items])
        assert (written, dups) == (len(claim.items), 0)
        assert leases.finish_task(store, claim, outcome="done") == "done"
    assert jobs.finalize_job(store, job.id) == "completed"
    view = jobs.view_job(store, job.id)
    assert view.counts.succeeded == 10 and view.counts.pending == 0
    rows = list(iter_results(store, job.id))
    assert [r.index for r in rows] == list(range(10))
    assert rows[0].to_record()["usage"] == {"prompt_tokens": 3, "completion_tokens": 4}


def test_first_writer_wins_and_duplicates_are_counted(store: Store) -> None:
    job = make_job(store, n=4, chunk=4)
    (tid,) = task_ids(store, job.id)
    first = leases.claim_task(store, tid, "w1", lease_seconds=0.01, max_attempts=3)
    assert isinstance(first, leases.Claim)
    time.sleep(0.05)  # lease expires: a second worker steals it
    second = leases.claim_task(store, tid, "w2", lease_seconds=30, max_attempts=3)
    assert isinstance(second, leases.Claim)
    assert write_results(store, second, [ok(i, "second") for i in range(4)]) == (4, 0)
    assert write_results(store, first, [ok(i, "first") for i in range(4)]) == (0, 4)
    assert {r.output for r in iter_results(store, job.id)} == {"second"}
    assert jobs.view_job(store, job.id).job.duplicate_executions == 4
    assert jobs.view_job(store, job.id).counts.succeeded == 4
    # The slow worker lost its lease: its heartbeat says so and its finish changes nothing.
    assert not leases.heartbeat(store, first, 30)
    assert leases.heartbeat(store, second, 30)


def test_live_lease_cannot_be_claimed(store: Store) -> None:
    job = make_job(store, n=2, chunk=2)
    (tid,) = task_ids(store, job.id)
    assert isinstance(
        leases.claim_task(store, tid, "w1", lease_seconds=30, max_attempts=3), leases.Claim
    )
    refused = leases.claim_task(store, tid, "w2", lease_seconds=30, max_attempts=3)
    assert isinstance(refused, leases.ClaimRefused) and refused.reason == "leased"


def test_expired_lease_is_requeued_and_partial_work_kept(store: Store) -> None:
    job = make_job(store, n=4, chunk=4)
    (tid,) = task_ids(store, job.id)
    claim = leases.claim_task(store, tid, "w1", lease_seconds=0.01, max_attempts=3)
    assert isinstance(claim, leases.Claim)
    write_results(store, claim, [ok(0), ok(1)])  # then the worker dies
    time.sleep(0.05)
    assert leases.recover_expired(store, max_attempts=3) == [tid]
    again = leases.claim_task(store, tid, "w2", lease_seconds=30, max_attempts=3)
    assert isinstance(again, leases.Claim)
    assert [i.idx for i in again.items] == [2, 3]  # finished items are not redone
    assert again.attempt == 2


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
        if isinstance(got, leases.ClaimRefused):
            pending.extend(got.new_tasks)
            continue
        claims_of_2 += any(i.idx == 2 for i in got.items)
        good = [ok(i.idx) for i in got.items if i.idx != 2]
        if len(got.items) > 1:
            time.sleep(0.01)
            pending.extend(leases.recover_expired(store, max_attempts=2) or [t])
            continue
        write_results(store, got, good)
        leases.finish_task(store, got, outcome="done") if good else time.sleep(0.01)
        if not good:
            pending.extend(leases.recover_expired(store, max_attempts=2) or [t])
    rows = {r.index: r for r in iter_results(store, job.id)}
    failed_items = {i for i, r in rows.items() if r.status == "failed"}
    assert failed_items == {2}
    assert rows[2].error_code == "attempts_exhausted"
    # Its attempts are those of every task it went through (the original and the splits).
    assert claims_of_2 == 6
    assert f"stopped its worker {claims_of_2} time(s)" in (rows[2].error_message or "")
    assert sorted(rows) == [0, 1, 2, 3]
    assert jobs.finalize_job(store, job.id) == "completed_with_errors"


def test_cancel_marks_unfinished_items(store: Store) -> None:
    job = make_job(store, n=8, chunk=4)
    first, _second = task_ids(store, job.id)
    claim = leases.claim_task(store, first, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, leases.Claim)
    write_results(store, claim, [ok(claim.items[0].idx)])
    assert jobs.request_cancel(store, job.id)
    assert leases.job_stop_requested(store, job.id)
    assert leases.finish_task(store, claim, outcome="stopped") == "cancelled"
    assert jobs.finalize_job(store, job.id) == "cancelled"
    statuses = [r.status for r in iter_results(store, job.id)]
    assert statuses.count("succeeded") == 1 and statuses.count("cancelled") == 7
    assert not jobs.request_cancel(store, job.id)  # already final


def test_expired_deadline_keeps_partial_results(store: Store) -> None:
    job = make_job(store, n=4, chunk=2)
    first, second = task_ids(store, job.id)
    claim = leases.claim_task(store, first, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, leases.Claim)
    write_results(store, claim, [ok(i.idx) for i in claim.items])
    leases.finish_task(store, claim, outcome="done")
    assert jobs.expire_job(store, job.id)
    view = jobs.view_job(store, job.id)
    assert view.job.state == "expired"
    assert (view.counts.succeeded, view.counts.expired) == (2, 2)
    refused = leases.claim_task(store, second, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(refused, leases.ClaimRefused)


def test_idempotency_key_returns_existing_job(store: Store) -> None:
    job = make_job(store, n=2, idempotency_key="k1")
    again = jobs.create_job(
        store, kind="generate", model="m", queue="q", params={}, chunk_size=2, idempotency_key="k1"
    )
    assert again == job.id


def test_failed_items_make_completed_with_errors_or_failed(store: Store) -> None:
    job = make_job(store, n=2, chunk=2)
    (tid,) = task_ids(store, job.id)
    claim = leases.claim_task(store, tid, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, leases.Claim)
    bad = [
        NewResult(idx=i, status=ResultStatus.FAILED, error_code="x", error_message="y")
        for i in range(2)
    ]
    write_results(store, claim, bad)
    leases.finish_task(store, claim, outcome="done")
    assert jobs.finalize_job(store, job.id) == "failed"
    rec = next(iter(iter_results(store, job.id))).to_record()
    assert rec["error"] == {"code": "x", "message": "y"} and rec["usage"] is None


def test_nul_characters_are_stored_the_same_on_every_backend(store: Store) -> None:
    """PostgreSQL text cannot hold NUL; a model that emits one must not fail the item."""
    job = make_job(store, n=1, chunk=1)
    (tid,) = task_ids(store, job.id)
    claim = leases.claim_task(store, tid, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, leases.Claim)
    res = NewResult(idx=0, status=ResultStatus.SUCCEEDED, output="a\x00b", outputs=["a\x00b", "c"])
    assert write_results(store, claim, [res]) == (1, 0)
    row = next(iter(iter_results(store, job.id)))
    assert row.output == "ab" and row.outputs == ["ab", "c"]


def test_retry_reruns_only_unsuccessful_items(store: Store) -> None:
    job = make_job(store, n=6, chunk=3)
    first, _second = task_ids(store, job.id)
    claim = leases.claim_task(store, first, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, leases.Claim)
    bad = NewResult(
        idx=1, status=ResultStatus.FAILED, error_code="generation_error", error_message="boom"
    )
    write_results(store, claim, [ok(0), bad, ok(2)])
    leases.finish_task(store, claim, outcome="done")
    jobs.request_cancel(store, job.id)  # items 3..5 never ran
    assert jobs.view_job(store, job.id).job.state == "cancelled"

    assert jobs.retry_items(store, job.id) == 4
    view = jobs.view_job(store, job.id)
    assert view.job.state == "queued" and not view.job.cancel_requested
    assert (view.counts.succeeded, view.counts.failed, view.counts.pending) == (2, 0, 4)
    todo = leases.queued_tasks(store, job_id=job.id)
    assert len(todo) == 2  # chunk size 3: items 1,3,4 and 5
    for tid, _queue, _prio in todo:
        got = leases.claim_task(store, tid, "w", lease_seconds=30, max_attempts=3)
        assert isinstance(got, leases.Claim) and got.attempt == 1
        write_results(store, got, [ok(i.idx, "retried") for i in got.items])
        leases.finish_task(store, got, outcome="done")
    assert jobs.finalize_job(store, job.id) == "completed"
    outputs = {r.index: r.output for r in iter_results(store, job.id)}
    assert outputs == {0: "out", 1: "retried", 2: "out", 3: "retried", 4: "retried", 5: "retried"}
    assert jobs.retry_items(store, job.id) == 0


def test_complete_task_writes_finishes_and_ends_the_job_in_one_transaction(store: Store) -> None:
    job = make_job(store, n=6, chunk=3)
    first, last = task_ids(store, job.id)
    for tid in (first, last):
        claim = leases.claim_task(store, tid, "w1", lease_seconds=30, max_attempts=3)
        assert isinstance(claim, leases.Claim)
        done = complete_task(
            store, claim, [ok(i.idx) for i in claim.items], outcome="done", engine="dry-run"
        )
        assert (done.written, done.duplicates, done.task_state) == (3, 0, "done")
        # Only the job's last task ends the job, in the same commit as its results.
        assert done.job_state == ("completed" if tid == last else None)
        assert jobs.view_job(store, job.id).job.state == ("completed" if tid == last else "running")
    view = jobs.view_job(store, job.id)
    assert view.counts.succeeded == 6 and view.job.engine == "dry-run"
    with store.session() as s:
        tries = s.scalars(select(Attempt).where(Attempt.job_id == job.id)).all()
    assert [(a.outcome, a.items_written) for a in tries] == [("done", 3), ("done", 3)]


def test_complete_task_releases_a_partial_task(store: Store) -> None:
    job = make_job(store, n=4, chunk=4)
    (tid,) = task_ids(store, job.id)
    claim = leases.claim_task(store, tid, "w1", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, leases.Claim)
    done = complete_task(store, claim, [ok(0), ok(1)], outcome="stopped")
    assert (done.written, done.task_state, done.job_state) == (2, "queued", None)
    again = leases.claim_task(store, tid, "w2", lease_seconds=30, max_attempts=3)
    assert isinstance(again, leases.Claim)
    assert [i.idx for i in again.items] == [2, 3]  # only what still lacks a result


def test_a_worker_that_lost_its_lease_keeps_the_attempt_outcome(store: Store) -> None:
    """A frozen worker's lease expires and another takes the task. When the first wakes
    up and finishes, its results are counted (duplicates where the other already wrote)
    but the task stays the new holder's, and its attempt keeps `lease_expired`."""
    job = make_job(store, n=4, chunk=4)
    (tid,) = task_ids(store, job.id)
    a = leases.claim_task(store, tid, "A", lease_seconds=0.05, max_attempts=3)
    assert isinstance(a, leases.Claim)
    time.sleep(0.1)
    assert leases.recover_expired(store, max_attempts=3) == [tid]
    b = leases.claim_task(store, tid, "B", lease_seconds=30, max_attempts=3)
    assert isinstance(b, leases.Claim)
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
    view = jobs.view_job(store, job.id)
    assert view.job.state == "completed" and view.job.duplicate_executions == 4
    assert view.counts.succeeded == 4


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
    assert isinstance(held, leases.Claim) and not held.begun
    time.sleep(0.1)  # the worker died while the task waited
    assert leases.recover_expired(store, max_attempts=1) == [second]
    assert attempts(second) == 0  # not charged: with max_attempts=1 it is still claimable

    current = leases.claim_task(store, first, "w", lease_seconds=30, max_attempts=1)
    held = leases.claim_task(store, second, "w", lease_seconds=30, max_attempts=1, begin=False)
    assert isinstance(current, leases.Claim) and isinstance(held, leases.Claim)
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


def test_a_split_task_sees_results_its_parent_s_late_worker_wrote(store: Store) -> None:
    """A worker loses the lease of a task that is then split (its attempts ran out),
    but finishes its micro-batch late and writes results under the old task. The new
    tasks must not generate those items again."""
    job = make_job(store, n=4, chunk=4)
    (tid,) = task_ids(store, job.id)
    late = leases.claim_task(store, tid, "slow", lease_seconds=0.05, max_attempts=1)
    assert isinstance(late, leases.Claim)
    time.sleep(0.1)
    halves = leases.recover_expired(store, max_attempts=1)
    assert len(halves) == 2  # split: the task used its only attempt
    assert write_results(store, late, [ok(i) for i in range(4)]) == (4, 0)  # the late write
    for half in halves:
        claim = leases.claim_task(store, half, "w", lease_seconds=30, max_attempts=1)
        assert isinstance(claim, leases.Claim)
        assert claim.items == []  # nothing left to generate
        assert complete_task(store, claim, [], outcome="done").task_state == "done"
    view = jobs.view_job(store, job.id)
    assert view.job.state == "completed" and view.counts.succeeded == 4
    assert view.job.duplicate_executions == 0


def test_starting_a_held_attempt_twice_counts_it_once(store: Store) -> None:
    job = make_job(store, n=2, chunk=2)
    (tid,) = task_ids(store, job.id)
    held = leases.claim_task(store, tid, "w", lease_seconds=30, max_attempts=3, begin=False)
    assert isinstance(held, leases.Claim)
    assert leases.begin_attempt(store, held) and leases.begin_attempt(store, held)  # a retry
    with store.read() as s:
        assert s.scalar(select(Task.attempts).where(Task.id == tid)) == 1


def test_a_job_being_submitted_cannot_be_cancelled_or_written_once_removed(
    store: Store,
) -> None:
    job = new_job(store, chunk=2)
    with pytest.raises(StorageError, match="still being submitted"):
        jobs.request_cancel(store, job.id)
    jobs.delete_job(store, job.id)  # what the reconciler does to an abandoned submission
    items = [jobs.NewItem(line=1, custom_id="c0", prompt="p0")]
    with pytest.raises(StorageError, match="removed while it was being submitted"):
        jobs.add_chunk(store, job, 0, items, [[0]])
