"""Re-running a finished job's unsuccessful items in the same job (`genqueue retry`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, insert, select, update

from genqueue.storage.db import Store
from genqueue.storage.errors import JobStateError
from genqueue.storage.models import Batch, Item, JobState, Result, ResultStatus, Task, TaskState
from genqueue.storage.status import get_job

RETRYABLE = (ResultStatus.FAILED.value, ResultStatus.CANCELLED.value, ResultStatus.EXPIRED.value)


def retry_items(
    store: Store,
    job_id: str,
    statuses: Sequence[str] = RETRYABLE,
    deadline_at: datetime | None = None,
) -> int:
    """Re-run a finished job's failed/cancelled/expired items in the same job, keeping its
    successes. Their results are removed, they get new tasks (fresh attempts) of the
    job's task size and the job is queued again. Returns the number of items re-queued
    (the caller dispatches them)."""
    bad = [s for s in statuses if s not in RETRYABLE]
    if bad:
        raise JobStateError(
            f"cannot retry items in status {bad}; retryable: {', '.join(RETRYABLE)}"
        )
    with store.session() as s:
        job = get_job(s, job_id)
        if not JobState(job.state).final:
            raise JobStateError(
                f"job {job_id} is still {job.state}; retry it once it has finished "
                "(or cancel it first)"
            )
        rows = s.execute(
            select(Result.idx, Result.task_id, Result.status)
            .where(Result.job_id == job_id, Result.status.in_(list(statuses)))
            .order_by(Result.idx)
        ).all()
        if not rows:
            return 0
        # Failed results were counted on their task; take them back off.
        failed_by_task: dict[int, int] = {}
        for r in rows:
            if r.status == ResultStatus.FAILED.value and r.task_id is not None:
                failed_by_task[r.task_id] = failed_by_task.get(r.task_id, 0) + 1
        for task_id, n in sorted(failed_by_task.items()):  # tasks in id order
            s.execute(update(Task).where(Task.id == task_id).values(n_failed=Task.n_failed - n))
        idxs = [r.idx for r in rows]
        for start in range(0, len(idxs), 900):
            part = idxs[start : start + 900]
            s.execute(delete(Result).where(Result.job_id == job_id, Result.idx.in_(part)))
        size = max(1, job.chunk_size)
        for start in range(0, len(idxs), size):
            part = idxs[start : start + size]
            task_id = s.scalar(
                insert(Task)
                .values(
                    {
                        "job_id": job_id,
                        "priority": job.priority,
                        "n_items": len(part),
                        "state": TaskState.PENDING.value,
                    }
                )
                .returning(Task.id)
            )
            s.execute(
                update(Item)
                .where(Item.job_id == job_id, Item.idx.in_(part))
                .values(task_id=task_id)
            )
        job.state = JobState.QUEUED.value
        job.cancel_requested = False
        job.finished_at = None
        job.deadline_at = deadline_at
        if job.batch_id is not None:
            # A cancelled batch runs again: its cancel is over (its status shows
            # in_progress, not cancelling, while the items run).
            s.execute(update(Batch).where(Batch.id == job.batch_id).values(cancelling_at=None))
        return len(idxs)
