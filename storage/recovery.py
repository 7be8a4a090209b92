"""Recovering tasks whose worker died: their lease expired without a heartbeat.

The reconciler calls `recover_expired` every pass. A recovered task is queued again for
another worker (and sent at the top priority), or, past the attempt cap, split to
isolate a poison item (poison.py).
"""

from __future__ import annotations

from sqlalchemy import select, update

from genqueue.storage import dialect
from genqueue.storage.db import Store, utcnow
from genqueue.storage.models import FINAL_JOB_STATES, Attempt, Job, Task, TaskState
from genqueue.storage.poison import isolate_poison


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
        # Lock what is recovered, in id order, and leave alone a task a worker is
        # completing right now (its row is locked): re-queueing it would undo its
        # `done`, and a second reconciler would split a poison task twice.
        expired = s.scalars(dialect.for_update_skip_locked(q, s)).all()
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
