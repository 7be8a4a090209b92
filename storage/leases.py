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

from sqlalchemy import exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from genqueue.storage.db import Store, as_utc, utcnow
from genqueue.storage.models import (
    FINAL_JOB_STATES,
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


@dataclass(frozen=True)
class ClaimRefused:
    """Why a claim did not happen, and tasks created by a split (to be enqueued)."""

    reason: str  # "not_found" | "done" | "leased" | "job_final" | "cancelled" | "split" | "failed"
    new_tasks: tuple[int, ...] = ()
    job_id: str | None = None  # the task's job (to finalise it), when the task exists


def _missing_items(s: Session, task_id: int, job_id: str) -> list[Item]:
    has_result = exists().where(Result.job_id == Item.job_id, Result.idx == Item.idx)
    return list(
        s.scalars(
            select(Item)
            # task_id alone (it is unique across jobs) so the planner takes ix_items_task, not
            # the (job_id, idx) key, which would walk every item of the job per claim.
            .where(Item.task_id == task_id, ~has_result)
            .order_by(Item.idx)
        )
    )


def claim_task(
    store: Store, task_id: int, worker: str, *, lease_seconds: float, max_attempts: int
) -> Claim | ClaimRefused:
    """Take the lease of a task if it is free (never claimed, or its lease expired)."""
    now = utcnow()
    with store.session() as s:
        q = select(Task).where(Task.id == task_id)
        if store.dialect == "postgresql":
            q = q.with_for_update()
        task = s.scalar(q)
        if task is None:
            return ClaimRefused("not_found")
        if task.state in (TaskState.DONE.value, TaskState.SPLIT.value, TaskState.CANCELLED.value):
            return ClaimRefused("done", job_id=task.job_id)
        if (
            task.state == TaskState.RUNNING.value
            and task.lease_expires_at is not None
            and (_aware(task.lease_expires_at) > now)
        ):
            return ClaimRefused("leased", job_id=task.job_id)
        job = s.get(Job, task.job_id)
        if job is None or job.state in FINAL_JOB_STATES:
            task.state = TaskState.CANCELLED.value
            return ClaimRefused("job_final", job_id=task.job_id)
        if job.cancel_requested:
            task.state = TaskState.CANCELLED.value
            task.finished_at = now
            return ClaimRefused("cancelled", job_id=task.job_id)
        if task.attempts >= max_attempts:
            new = isolate_poison(s, task, "the task reached its attempt limit")
            return ClaimRefused("split" if new else "failed", tuple(new), task.job_id)
        items = _missing_items(s, task.id, task.job_id)
        token = uuid.uuid4().hex
        task.attempts += 1
        task.state = TaskState.RUNNING.value
        task.lease_owner = worker
        task.lease_token = token
        task.lease_expires_at = now + timedelta(seconds=lease_seconds)
        task.started_at = task.started_at or now
        if items:
            s.execute(
                update(Item)
                .where(Item.job_id == task.job_id, Item.idx.in_([i.idx for i in items]))
                .values(attempts=Item.attempts + 1)
            )
        attempt_id = s.scalar(
            insert(Attempt)
            .values(
                {
                    "task_id": task.id,
                    "job_id": task.job_id,
                    "number": task.attempts,
                    "worker": worker,
                    "lease_token": token,
                    "started_at": now,
                }
            )
            .returning(Attempt.id)
        )
        if job.state == JobState.QUEUED.value:
            job.state = JobState.RUNNING.value
            job.started_at = job.started_at or now
        return Claim(
            task_id=task.id,
            job_id=task.job_id,
            token=token,
            attempt=task.attempts,
            attempt_id=int(attempt_id or 0),
            worker=worker,
            job_params=dict(job.params),
            job_options=dict(job.options),
            items=[ClaimedItem(i.idx, i.custom_id, i.prompt, i.params) for i in items],
        )


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
    now = utcnow()
    with store.session() as s:
        task = s.get(Task, claim.task_id)
        assert task is not None
        missing = s.scalar(
            select(func.count())
            .select_from(Item)
            .where(
                Item.task_id == claim.task_id,  # alone: see _missing_items
                ~exists().where(Result.job_id == Item.job_id, Result.idx == Item.idx),
            )
        )
        s.execute(
            update(Attempt)
            .where(Attempt.id == claim.attempt_id)
            .values(
                outcome=outcome,
                finished_at=now,
                error=error,
                engine=engine,
                model_revision=model_revision,
            )
        )
        if task.lease_token != claim.token:
            return task.state  # lease lost meanwhile: the new holder decides
        job = s.get(Job, claim.job_id)
        if job is not None and engine and job.engine != engine:
            job.engine = engine
        if job is not None and model_revision and job.revision is None:
            job.revision = model_revision
        if not missing:
            task.state = TaskState.DONE.value
        elif job is None or job.cancel_requested or job.state in FINAL_JOB_STATES:
            task.state = TaskState.CANCELLED.value
        else:
            task.state = TaskState.QUEUED.value
            task.enqueued_at = None  # the caller re-sends it
        if error:
            task.last_error = error
        task.lease_owner = task.lease_token = None
        task.lease_expires_at = None
        task.finished_at = now if task.state != TaskState.QUEUED.value else None
        return task.state


def isolate_poison(s: Session, task: Task, why: str) -> list[int]:
    """A task that exhausted its attempts: split its remaining items in two new tasks
    (each starts with fresh attempts), or, for a single item, fail that item."""
    items = _missing_items(s, task.id, task.job_id)
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
    for item in items:
        s.execute(
            insert(Result),
            [
                {
                    "job_id": item.job_id,
                    "idx": item.idx,
                    "task_id": task.id,
                    "status": ResultStatus.FAILED.value,
                    "error_code": "attempts_exhausted",
                    "error_message": (
                        f"this item stopped its worker {item.attempts} time(s) (crash, kill or "
                        f"timeout; {why}); it was isolated and failed so the rest of the job could "
                        "finish. Check the input, lower max_new_tokens, or retry the job."
                    ),
                    "attempt": item.attempts,
                    "created_at": now,
                }
            ],
        )
        task.n_failed += 1
    return []


def recover_expired(store: Store, *, max_attempts: int, limit: int = 500) -> list[int]:
    """Tasks whose lease expired: re-queue them (or isolate poison). Returns the task ids
    that must be (re)sent to the broker."""
    now = utcnow()
    to_send: list[int] = []
    with store.session() as s:
        expired = s.scalars(
            select(Task)
            .where(Task.state == TaskState.RUNNING.value, Task.lease_expires_at < now)
            .limit(limit)
        ).all()
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
    store: Store, *, older_than: datetime, limit: int = 5000
) -> list[tuple[int, str, int]]:
    """Tasks that should be on the broker but were never sent (pending or re-queued with
    no send time): (task id, queue, priority)."""
    with store.read() as s:
        rows = (
            s.execute(
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
            .tuples()
            .all()
        )
        return list(rows)


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
                Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
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
