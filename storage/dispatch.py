"""Dispatch bookkeeping: which tasks must be on the broker, and which were sent.

SQL is the truth; the broker only carries task ids. A task is `pending` until it is
sent and `queued` after (`enqueued_at` set); a task re-queued without a send time must be
sent again. The scheduler's Dispatcher sends and calls `mark_sent`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update

from genqueue.storage.db import Store, utcnow
from genqueue.storage.models import LIVE_JOB_STATES, Job, JobState, Task, TaskState

#: Jobs whose tasks may be on the broker: submitting ones too (a large input's first
#: windows are out already).
_SENT_STATES = (*LIVE_JOB_STATES, JobState.SUBMITTING.value)


def tasks_to_send(
    store: Store, *, older_than: datetime, limit: int = 5000, job_id: str | None = None
) -> list[tuple[int, str, int]]:
    """Tasks that should be on the broker but were never sent (pending or re-queued with
    no send time): (task id, queue, priority)."""
    q = (
        select(Task.id, Job.queue, Task.priority)
        .join(Job, Job.id == Task.job_id)
        .where(
            Job.state.in_(LIVE_JOB_STATES),
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
                Job.state.in_(_SENT_STATES),
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


def send_targets(store: Store, task_ids: list[int]) -> list[tuple[int, str, int]]:
    """(task id, queue, priority) of these tasks, to send them (e.g. split or released
    by a worker), in id order."""
    with store.read() as s:
        return list(
            s.execute(
                select(Task.id, Job.queue, Task.priority)
                .join(Job, Job.id == Task.job_id)
                .where(Task.id.in_(task_ids))
                .order_by(Task.id)
            )
            .tuples()
            .all()
        )


def live_queues(store: Store) -> list[str]:
    """The queues of every job that may still have work on the broker."""
    with store.read() as s:
        return list(s.scalars(select(Job.queue).where(Job.state.in_(_SENT_STATES)).distinct()))
