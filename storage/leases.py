"""Task leases: the SQL clock that makes delivery at-least-once and recovery fast.

A worker *claims* a task (its attempt counted before any work), *heartbeats* the lease
while it generates, and *ends its attempt* when it completes the task (in the one
transaction of completion.complete_task). A lease that expires because its worker
died is recovered by the reconciler (recovery.py).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from genqueue.storage import dialect
from genqueue.storage.claims import Claim, ClaimedItem, ClaimRefused, missing_items
from genqueue.storage.db import Store, aware, utcnow
from genqueue.storage.models import FINAL_JOB_STATES, Attempt, Job, JobState, Task, TaskState
from genqueue.storage.poison import isolate_poison

_T, _J, _A = Task.__table__, Job.__table__, Attempt.__table__


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
                _J.c.chat_template,
            )
            .select_from(_T.join(_J, _J.c.id == _T.c.job_id))
            .where(_T.c.id == task_id)
        )
        row = conn.execute(dialect.for_update(q, s, of=_T)).one_or_none()
        if row is None:
            return ClaimRefused("not_found")
        job_id = row.job_id
        if row.state in (TaskState.DONE.value, TaskState.SPLIT.value, TaskState.CANCELLED.value):
            return ClaimRefused("done", job_id=job_id)
        if (
            row.state == TaskState.RUNNING.value
            and row.lease_expires_at is not None
            and aware(row.lease_expires_at) > now
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
        items = missing_items(s, task_id, job_id, known)
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
            items=[ClaimedItem(i.idx, i.custom_id, i.prompt, i.params, i.messages) for i in items],
            begun=begin,
            chat_template=row.chat_template,
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


def end_attempt_in(
    s: Session,
    claim: Claim,
    *,
    outcome: str,
    engine: str | None = None,
    model_revision: str | None = None,
    error: str | None = None,
    written: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> str:
    """End an attempt, inside the caller's transaction (see completion.complete_task).
    The task is `done` when every item has a result; otherwise it is released
    (`queued`, lease cleared) for another attempt, or cancelled with its job. Returns
    the task's new state. `written` is what this transaction inserted (rows,
    duplicates, succeeded, failed), added to the counters in the same statements that
    end the attempt and the lease."""
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
    row = conn.execute(dialect.for_update(q, s, of=_T)).one()
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
    n_missing = row.n_items - (row.n_succeeded + ok) - (row.n_failed + bad)
    if n_missing > 0:
        n_missing = len(missing_items(s, claim.task_id, claim.job_id, n_missing))
    job_values: dict[str, Any] = {}
    if engine and row.engine != engine:
        job_values["engine"] = engine
    if model_revision and row.revision is None:
        job_values["revision"] = model_revision
    if job_values and row.job_state is not None:
        conn.execute(update(_J).where(_J.c.id == claim.job_id).values(**job_values))
    if not n_missing:
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
