"""Task leases: the SQL clock that makes delivery at-least-once and recovery fast.

A worker *claims* a task (attempt counted before any work), *heartbeats* the lease while
it generates, and *finishes* or *releases* it. A lease that expires (the worker died) is
recovered by the reconciler: the task is re-queued, or, past the attempt cap, split in
two to isolate a poison item, and a lone poison item is failed with a clear error.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, any_, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from genqueue.storage.db import Store, as_utc, utcnow
from genqueue.storage.models import (
    FINAL_JOB_STATES,
    SUBMITTING,
    Attempt,
    Item,
    Job,
    JobState,
    Result,
    ResultStatus,
    Task,
    TaskState,
)


@dataclass(frozen=True)
class ClaimedItem:
    idx: int
    custom_id: str
    prompt: str
    params: dict[str, Any] | None


@dataclass(frozen=True)
class Claim:
    """What a worker holds while it works on a task."""

    task_id: int
    job_id: str
    token: str
    attempt: int
    attempt_id: int
    worker: str
    job_params: dict[str, Any]
    job_options: dict[str, Any]
    items: list[ClaimedItem]  # only the items that still lack a result
    begun: bool = True  # False: held (prefetched); call begin_attempt before working


@dataclass(frozen=True)
class ClaimRefused:
    """Why a claim did not happen, and tasks created by a split (to be enqueued)."""

    reason: str  # "not_found" | "done" | "leased" | "job_final" | "cancelled" | "split" | "failed"
    new_tasks: tuple[int, ...] = ()
    job_id: str | None = None  # the task's job (to finalise it), when the task exists


_T, _J, _I, _R, _A = (m.__table__ for m in (Task, Job, Item, Result, Attempt))


def _has_result() -> Any:
    return exists().where(_R.c.job_id == _I.c.job_id, _R.c.idx == _I.c.idx)


def _missing(conn: Any, dialect: str, task_id: int, job_id: str, with_result: int) -> list[Any]:
    """A task's items that still lack a result, in input order. `with_result` is the
    task's own count of results (its n_succeeded + n_failed counters, kept in the
    transactions that insert them): on a first claim it is 0 and results are not read."""
    # task_id alone (it is unique across jobs) so the planner takes ix_items_task, not
    # the (job_id, idx) key, which would walk every item of the job per claim.
    cols = select(_I.c.idx, _I.c.custom_id, _I.c.prompt, _I.c.params).order_by(_I.c.idx)
    if not with_result:
        return list(conn.execute(cols.where(_I.c.task_id == task_id)).all())
    if dialect != "postgresql":
        # SQLite answers NOT EXISTS with a primary-key probe per item.
        return list(conn.execute(cols.where(_I.c.task_id == task_id, ~_has_result())).all())
    rows = conn.execute(cols.where(_I.c.task_id == task_id)).all()
    done = with_results(conn, job_id, [r.idx for r in rows])
    return [r for r in rows if r.idx not in done]


def with_results(conn: Any, job_id: str, idxs: list[int]) -> set[int]:
    """Which of these items of a job have a result: primary-key probes, one array
    parameter. PostgreSQL plans an anti-join with `results` by its statistics, and
    while they lag behind a growing job (autovacuum analyses late, or is off) it
    picked a scan of every result per claim (25 ms each at 100k items)."""
    if not idxs:
        return set()
    arr = bindparam("idxs", idxs, type_=postgresql.ARRAY(Integer))
    return set(conn.scalars(select(_R.c.idx).where(_R.c.job_id == job_id, _R.c.idx == any_(arr))))


def claim_task(
    store: Store,
    task_id: int,
    worker: str,
    *,
    lease_seconds: float,
    max_attempts: int,
    begin: bool = True,
) -> Claim | ClaimRefused:
    """Take the lease of a task if it is free (never claimed, or its lease expired).

    With `begin`, the attempt counts now (work starts at once). Without it the task
    is only held (prefetched, waiting for the model): the attempt counts when
    `begin_attempt` says work starts, so a task that was merely waiting when a poison
    item killed its worker is not charged an attempt.

    One transaction of a few plain statements (no ORM objects on the hot path): a claim
    per task is part of every item's cost."""
    now = utcnow()
    with store.session() as s:
        conn = s.connection()
        q = (
            select(
                _T.c.job_id,
                _T.c.state,
                _T.c.lease_expires_at,
                _T.c.attempts,
                _T.c.n_succeeded,
                _T.c.n_failed,
                _T.c.parent_id,
                _J.c.state.label("job_state"),
                _J.c.cancel_requested,
                _J.c.params,
                _J.c.options,
            )
            .select_from(_T.join(_J, _J.c.id == _T.c.job_id))
            .where(_T.c.id == task_id)
        )
        if store.dialect == "postgresql":
            q = q.with_for_update(of=_T, key_share=True)
        row = conn.execute(q).one_or_none()
        if row is None:
            return ClaimRefused("not_found")
        job_id = row.job_id
        if row.state in (TaskState.DONE.value, TaskState.SPLIT.value, TaskState.CANCELLED.value):
            return ClaimRefused("done", job_id=job_id)
        if (
            row.state == TaskState.RUNNING.value
            and row.lease_expires_at is not None
            and _aware(row.lease_expires_at) > now
        ):
            return ClaimRefused("leased", job_id=job_id)
        this_task = update(_T).where(_T.c.id == task_id)
        if row.job_state in FINAL_JOB_STATES:
            conn.execute(this_task.values(state=TaskState.CANCELLED.value))
            return ClaimRefused("job_final", job_id=job_id)
        if row.cancel_requested:
            conn.execute(this_task.values(state=TaskState.CANCELLED.value, finished_at=now))
            return ClaimRefused("cancelled", job_id=job_id)
        if row.attempts >= max_attempts:
            task = s.get(Task, task_id)
            assert task is not None
            new = isolate_poison(s, task, "the task reached its attempt limit")
            return ClaimRefused("split" if new else "failed", tuple(new), job_id)
        # A task split from another may have results written under its parent's id (a
        # late worker of the parent): read them. Otherwise its own counters tell.
        known = row.n_succeeded + row.n_failed + (1 if row.parent_id is not None else 0)
        items = _missing(conn, store.dialect, task_id, job_id, known)
        token = uuid.uuid4().hex
        attempt = row.attempts + 1
        conn.execute(
            this_task.values(
                attempts=attempt if begin else row.attempts,
                state=TaskState.RUNNING.value,
                lease_owner=worker,
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                started_at=func.coalesce(_T.c.started_at, now),
            )
        )
        attempt_id = conn.scalar(
            insert(_A)
            .values(
                task_id=task_id,
                job_id=job_id,
                number=attempt,
                worker=worker,
                lease_token=token,
                started_at=now,
                began_at=now if begin else None,
                items_written=0,
                duplicates=0,
            )
            .returning(_A.c.id)
        )
        if row.job_state == JobState.QUEUED.value:
            conn.execute(
                update(_J)
                .where(_J.c.id == job_id, _J.c.state == JobState.QUEUED.value)
                .values(
                    state=JobState.RUNNING.value, started_at=func.coalesce(_J.c.started_at, now)
                )
            )
        return Claim(
            task_id=task_id,
            job_id=job_id,
            token=token,
            attempt=attempt,
            attempt_id=int(attempt_id or 0),
            worker=worker,
            job_params=dict(row.params or {}),
            job_options=dict(row.options or {}),
            items=[ClaimedItem(i.idx, i.custom_id, i.prompt, i.params) for i in items],
            begun=begin,
        )


def begin_attempt(store: Store, claim: Claim) -> bool:
    """Count the attempt of a held claim, right before its work starts. False when the
    lease was lost meanwhile (the task is someone else's now)."""
    with store.session() as s:
        return begin_in(s, claim)


def begin_in(s: Session, claim: Claim) -> bool:
    """`begin_attempt` inside the caller's transaction."""
    conn = s.connection()
    began = conn.execute(
        update(_A)
        .where(_A.c.id == claim.attempt_id, _A.c.began_at.is_(None))
        .values(began_at=utcnow())
    )
    res = conn.execute(
        update(_T)
        .where(
            _T.c.id == claim.task_id,
            _T.c.lease_token == claim.token,
            _T.c.state == TaskState.RUNNING.value,
        )
        # Counted once, even when a retried transaction runs this again.
        .values(attempts=_T.c.attempts + (1 if began.rowcount else 0))
    )
    return bool(res.rowcount)


def _aware(value: datetime) -> datetime:
    out = as_utc(value)
    assert out is not None
    return out


def heartbeat(store: Store, claim: Claim, lease_seconds: float) -> bool:
    """Extend the lease; False means it was lost (expired and taken by someone else)."""
    with store.session() as s:
        res = s.execute(
            update(Task)
            .where(
                Task.id == claim.task_id,
                Task.lease_token == claim.token,
                Task.state == TaskState.RUNNING.value,
            )
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        )
        return bool(res.rowcount)


def claim_current(store: Store, claim: Claim) -> bool:
    """True while the claim still holds its task's lease and the job still wants the
    work (not cancelled, not ended). One cheap read, for checks between micro-batches."""
    with store.read() as s:
        row = s.execute(
            select(Task.lease_token, Task.state, Job.cancel_requested, Job.state)
            .join(Job, Job.id == Task.job_id)
            .where(Task.id == claim.task_id)
        ).one_or_none()
    if row is None:
        return False
    token, task_state, cancel_requested, job_state = row
    return (
        token == claim.token
        and task_state == TaskState.RUNNING.value
        and not cancel_requested
        and job_state not in FINAL_JOB_STATES
    )


def job_stop_requested(store: Store, job_id: str) -> bool:
    """True when the job was cancelled or reached a final state (e.g. expired)."""
    with store.read() as s:
        row = s.execute(
            select(Job.cancel_requested, Job.state).where(Job.id == job_id)
        ).one_or_none()
        return row is None or bool(row[0]) or row[1] in FINAL_JOB_STATES


def finish_task(
    store: Store,
    claim: Claim,
    *,
    outcome: str,
    engine: str | None = None,
    model_revision: str | None = None,
    error: str | None = None,
) -> str:
    """End an attempt. The task is `done` when every item has a result; otherwise it is
    released (`queued`, lease cleared) for another attempt, or cancelled with its job.
    Returns the task's new state."""
    with store.session() as s:
        return finish_in(
            s,
            store.dialect,
            claim,
            outcome=outcome,
            engine=engine,
            model_revision=model_revision,
            error=error,
        )


def finish_in(
    s: Session,
    dialect: str,
    claim: Claim,
    *,
    outcome: str,
    engine: str | None = None,
    model_revision: str | None = None,
    error: str | None = None,
    written: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> str:
    """`finish_task` inside the caller's transaction. `written` is what this
    transaction inserted (rows, duplicates, succeeded, failed), added to the counters in
    the same statements that end the attempt and the lease."""
    rows, dups, ok, bad = written
    now = utcnow()
    conn = s.connection()
    q = (
        select(
            _T.c.state,
            _T.c.lease_token,
            _T.c.n_items,
            _T.c.n_succeeded,
            _T.c.n_failed,
            _J.c.state.label("job_state"),
            _J.c.cancel_requested,
            _J.c.engine,
            _J.c.revision,
        )
        .select_from(_T.outerjoin(_J, _J.c.id == _T.c.job_id))
        .where(_T.c.id == claim.task_id)
    )
    if dialect == "postgresql":
        q = q.with_for_update(of=_T, key_share=True)
    row = conn.execute(q).one()
    # A lease lost meanwhile already ended this attempt (`lease_expired`): keep that
    # outcome, add what this worker still wrote.
    conn.execute(
        update(_A)
        .where(_A.c.id == claim.attempt_id)
        .values(
            outcome=func.coalesce(_A.c.outcome, outcome),
            finished_at=func.coalesce(_A.c.finished_at, now),
            error=func.coalesce(_A.c.error, error),
            engine=engine,
            model_revision=model_revision,
            items_written=_A.c.items_written + rows,
            duplicates=_A.c.duplicates + dups,
        )
    )
    counters = {"n_succeeded": _T.c.n_succeeded + ok, "n_failed": _T.c.n_failed + bad}
    if row.lease_token != claim.token:
        if ok or bad:
            conn.execute(update(_T).where(_T.c.id == claim.task_id).values(**counters))
        return str(row.state)  # lease lost meanwhile: the new holder decides
    # The task's counters count the result rows written under this task (in the
    # transactions that insert them, this one included): when they say all are there,
    # nothing is read. When they do not, the rows are checked, because a worker that lost
    # the lease of the task this one was split from may have written some of its items.
    missing_items = row.n_items - (row.n_succeeded + ok) - (row.n_failed + bad)
    if missing_items > 0:
        missing_items = len(_missing(conn, dialect, claim.task_id, claim.job_id, missing_items))
    job_values: dict[str, Any] = {}
    if engine and row.engine != engine:
        job_values["engine"] = engine
    if model_revision and row.revision is None:
        job_values["revision"] = model_revision
    if job_values and row.job_state is not None:
        conn.execute(update(_J).where(_J.c.id == claim.job_id).values(**job_values))
    if not missing_items:
        state = TaskState.DONE.value
    elif row.job_state is None or row.cancel_requested or row.job_state in FINAL_JOB_STATES:
        state = TaskState.CANCELLED.value
    else:
        state = TaskState.QUEUED.value
    values: dict[str, Any] = {
        **counters,
        "state": state,
        "lease_owner": None,
        "lease_token": None,
        "lease_expires_at": None,
        "finished_at": now if state != TaskState.QUEUED.value else None,
    }
    if state == TaskState.QUEUED.value:
        values["enqueued_at"] = None  # the caller re-sends it
    if error:
        values["last_error"] = error
    conn.execute(update(_T).where(_T.c.id == claim.task_id).values(**values))
    return state


def isolate_poison(s: Session, task: Task, why: str) -> list[int]:
    """A task that exhausted its attempts: split its remaining items in two new tasks
    (each starts with fresh attempts), or, for a single item, fail that item."""
    conn = s.connection()
    items = _missing(conn, conn.dialect.name, task.id, task.job_id, with_result=1)  # read rows
    now = utcnow()
    task.lease_owner = task.lease_token = None
    task.lease_expires_at = None
    task.finished_at = now
    if len(items) > 1:
        half = len(items) // 2
        new_ids = []
        for part in (items[:half], items[half:]):
            new_id = s.scalar(
                insert(Task)
                .values(
                    {
                        "job_id": task.job_id,
                        "priority": task.priority,
                        "n_items": len(part),
                        "state": TaskState.QUEUED.value,
                        "parent_id": task.id,
                    }
                )
                .returning(Task.id)
            )
            assert new_id is not None
            s.execute(
                update(Item)
                .where(Item.job_id == task.job_id, Item.idx.in_([i.idx for i in part]))
                .values(task_id=new_id)
            )
            new_ids.append(int(new_id))
        task.state = TaskState.SPLIT.value
        task.n_items -= len(items)
        return new_ids
    task.state = TaskState.DONE.value
    tries = _lineage_attempts(s, task)
    for item in items:
        s.execute(
            insert(Result),
            [
                {
                    "job_id": task.job_id,
                    "idx": item.idx,
                    "task_id": task.id,
                    "status": ResultStatus.FAILED.value,
                    "error_code": "attempts_exhausted",
                    "error_message": (
                        f"this item stopped its worker {tries} time(s) (crash, kill or "
                        f"timeout; {why}); it was isolated and failed so the rest of the job could "
                        "finish. Check the input, lower max_new_tokens, or retry the job."
                    ),
                    "attempt": tries,
                    "created_at": now,
                }
            ],
        )
        task.n_failed += 1
    return []


def _lineage_attempts(s: Session, task: Task) -> int:
    """Attempts an item of `task` went through: the task's, plus those of the tasks it was
    split from (an item left without a result was in every one of them). Counting them
    here, once, spares every claim an UPDATE of its items."""
    total, parent = task.attempts, task.parent_id
    while parent is not None:
        row = s.execute(
            select(Task.attempts, Task.parent_id).where(Task.id == parent)
        ).one_or_none()
        if row is None:
            break
        total += row.attempts
        parent = row.parent_id
    return total


def recover_expired(store: Store, *, max_attempts: int, limit: int = 500) -> list[int]:
    """Tasks whose lease expired: re-queue them (or isolate poison). Returns the task ids
    that must be (re)sent to the broker."""
    now = utcnow()
    to_send: list[int] = []
    with store.session() as s:
        q = (
            select(Task)
            .where(Task.state == TaskState.RUNNING.value, Task.lease_expires_at < now)
            .order_by(Task.id)
            .limit(limit)
        )
        if store.dialect == "postgresql":
            # Lock what is recovered, in id order, and leave alone a task a worker is
            # finishing right now (its row is locked): re-queueing it would undo its
            # `done`, and a second reconciler would split a poison task twice.
            q = q.with_for_update(skip_locked=True)
        expired = s.scalars(q).all()
        for task in expired:
            job = s.get(Job, task.job_id)
            if job is None or job.cancel_requested or job.state in FINAL_JOB_STATES:
                task.state = TaskState.CANCELLED.value
                task.lease_owner = task.lease_token = None
                task.lease_expires_at = None
                continue
            s.execute(
                update(Attempt)
                .where(
                    Attempt.task_id == task.id,
                    Attempt.lease_token == task.lease_token,
                    Attempt.outcome.is_(None),
                )
                .values(outcome="lease_expired", finished_at=now)
            )
            if task.attempts >= max_attempts:
                to_send.extend(isolate_poison(s, task, "its lease expired each time"))
                continue
            task.state = TaskState.QUEUED.value
            task.lease_owner = task.lease_token = None
            task.lease_expires_at = None
            task.enqueued_at = None
            to_send.append(task.id)
    return to_send


def tasks_to_send(
    store: Store, *, older_than: datetime, limit: int = 5000, job_id: str | None = None
) -> list[tuple[int, str, int]]:
    """Tasks that should be on the broker but were never sent (pending or re-queued with
    no send time): (task id, queue, priority)."""
    q = (
        select(Task.id, Job.queue, Task.priority)
        .join(Job, Job.id == Task.job_id)
        .where(
            Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
            Job.cancel_requested.is_(False),
            or_(
                Task.state == TaskState.PENDING.value,
                (Task.state == TaskState.QUEUED.value) & Task.enqueued_at.is_(None),
            ),
            Job.created_at < older_than,
        )
        .order_by(Task.priority.desc(), Task.id)
        .limit(limit)
    )
    if job_id is not None:
        q = q.where(Task.job_id == job_id)
    with store.read() as s:
        return list(s.execute(q).tuples().all())


def queued_tasks(
    store: Store,
    *,
    queue: str | None = None,
    sent_before: datetime | None = None,
    job_id: str | None = None,
) -> list[tuple[int, str, int]]:
    """Tasks believed to be on the broker (to rebuild a lost queue); with `sent_before`,
    only those sent before then."""
    with store.read() as s:
        q = (
            select(Task.id, Job.queue, Task.priority)
            .join(Job, Job.id == Task.job_id)
            .where(
                Task.state.in_([TaskState.QUEUED.value, TaskState.PENDING.value]),
                # Submitting: a large input's first windows are out already.
                Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value, SUBMITTING]),
                Job.cancel_requested.is_(False),
            )
            .order_by(Task.priority.desc(), Task.id)
        )
        if queue:
            q = q.where(Job.queue == queue)
        if sent_before is not None:
            q = q.where(Task.enqueued_at < sent_before)
        if job_id is not None:
            q = q.where(Task.job_id == job_id)
        return list(s.execute(q).tuples().all())


def mark_sent(store: Store, task_ids: list[int]) -> None:
    """Record that these tasks are on the broker now."""
    if not task_ids:
        return
    now = utcnow()
    with store.session() as s:
        for start in range(0, len(task_ids), 900):
            chunk = task_ids[start : start + 900]
            s.execute(
                update(Task)
                .where(
                    Task.id.in_(chunk),
                    Task.state.in_([TaskState.PENDING.value, TaskState.QUEUED.value]),
                )
                .values(state=TaskState.QUEUED.value, enqueued_at=now)
            )


def task_priorities(store: Store, task_ids: list[int]) -> dict[int, int]:
    with store.read() as s:
        return dict(
            s.execute(select(Task.id, Task.priority).where(Task.id.in_(task_ids))).tuples().all()
        )
