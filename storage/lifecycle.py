"""A job's life after submission: stopping, cancelling, expiring, finalising, removing.

"Finalise" means one thing: a job with no open task moves to its final state
(completed, completed_with_errors, failed, cancelled). Any process may call it at any
time; it locks the job row and reads it again, so it happens once. Every move to a
final state (here and in `expire_job`) writes its webhook event in the same
transaction (webhooks.py).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from genqueue.storage import dialect, webhooks
from genqueue.storage.db import Store, utcnow
from genqueue.storage.errors import JobStateError, StorageError
from genqueue.storage.models import (
    FINAL_JOB_STATES,
    LIVE_JOB_STATES,
    OPEN_TASK_STATES,
    Attempt,
    Item,
    Job,
    JobState,
    Result,
    ResultStatus,
    Task,
    TaskState,
)
from genqueue.storage.status import get_job, job_counts


def stop_job(store: Store, job_id: str) -> None:
    """Stop a job's work without ending it (a submission being rejected): claims are
    refused and running tasks stop after their micro-batch."""
    with store.session() as s:
        _stop_in(s, job_id)


def _stop_in(s: Session, job_id: str) -> None:
    """Ask the job to stop: tasks not yet running are cancelled; running ones see
    `cancel_requested` and stop after their in-flight micro-batch. Tasks before the
    job row (the lock order in dialect.py)."""
    s.execute(
        update(Task)
        .where(
            Task.job_id == job_id,
            Task.state.in_([TaskState.PENDING.value, TaskState.QUEUED.value]),
        )
        .values(state=TaskState.CANCELLED.value, finished_at=utcnow())
    )
    s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))


def request_cancel(store: Store, job_id: str) -> bool:
    """Ask a job to stop: tasks not yet running are cancelled now; running ones stop after
    their in-flight micro-batch. Returns False when the job had already finished."""
    with store.session() as s:
        job = get_job(s, job_id)
        if job.state in FINAL_JOB_STATES:
            return False
        if job.state == JobState.SUBMITTING.value:
            raise JobStateError(
                f"job {job_id} is still being submitted; cancel it once its submission "
                "has finished (windows stored after a cancel would never run or end)"
            )
        _stop_in(s, job_id)
    finalize_job(store, job_id)
    return True


def delete_job(store: Store, job_id: str) -> None:
    """Remove a job and everything under it (a rejected or abandoned submission). A
    worker still finishing one of its tasks finds the task gone and drops its results."""
    stop_job(store, job_id)
    with store.session() as s:
        # Its tasks first, in id order (as a finishing worker locks its own and its
        # next task): this waits for a worker finishing one, then removes its results.
        dialect.lock_job_tasks(s, job_id)
        for model in (Task, Result, Item, Attempt):
            s.execute(delete(model).where(model.job_id == job_id))
        s.execute(delete(Job).where(Job.id == job_id))


def _fill_missing_results(s: Session, job_id: str, status: ResultStatus, message: str) -> None:
    """Give every item without a result a final `status` result (cancelled/expired).
    Two processes may end a job at once (a cancel through the API, the reconciler):
    a row the other wrote first is kept."""
    now = utcnow()
    code = "job_cancelled" if status is ResultStatus.CANCELLED else "job_expired"
    missing = (
        select(Item.job_id, Item.idx, Item.task_id)
        .where(Item.job_id == job_id)
        .where(
            ~select(Result.idx).where(Result.job_id == Item.job_id, Result.idx == Item.idx).exists()
        )
    )
    rows = s.execute(missing).all()
    if rows:
        s.execute(
            dialect.insert_new(s, Result.__table__),
            [
                {
                    "job_id": r.job_id,
                    "idx": r.idx,
                    "task_id": r.task_id,
                    "status": status.value,
                    "error_code": code,
                    "error_message": message,
                    "created_at": now,
                }
                for r in rows
            ],
        )


def finalize_job(store: Store, job_id: str) -> str | None:
    """Move a job to its final state once no task is open; returns the new state, if any.
    Safe to call from any process at any time (it waits for the job's row lock)."""
    with store.session() as s:
        return finalize_job_in(s, job_id)


def finalize_job_in(s: Session, job_id: str) -> str | None:
    """`finalize_job` inside the caller's transaction (a worker folds it into the
    transaction that completes the job's last task)."""
    tasks = Task.__table__
    open_tasks = s.connection().scalar(
        select(func.count())
        .select_from(tasks)
        .where(tasks.c.job_id == job_id, tasks.c.state.in_(OPEN_TASK_STATES))
    )
    if open_tasks:
        return None  # the common case, answered from the (job_id, state) index alone
    # Two processes may end a job at once (a cancel through the API and the reconciler):
    # the second waits here for the first's commit, then reads the job as it left it,
    # so one of them ends it and writes its webhook event.
    dialect.lock_job(s, job_id)
    job = s.get(Job, job_id, populate_existing=True)
    if job is None or job.state not in LIVE_JOB_STATES:
        return None
    now = utcnow()
    if job.cancel_requested:
        _fill_missing_results(
            s, job_id, ResultStatus.CANCELLED, "the job was cancelled before this item ran"
        )
        state = JobState.CANCELLED
    else:
        counts = job_counts(s, job)
        if counts.succeeded + counts.failed < job.total_items:
            raise StorageError(
                f"job {job_id}: no open task but only {counts.succeeded + counts.failed} of "
                f"{job.total_items} items have results"
            )
        if counts.failed == 0:
            state = JobState.COMPLETED
        elif counts.succeeded == 0:
            state = JobState.FAILED
        else:
            state = JobState.COMPLETED_WITH_ERRORS
    job.state = state.value
    job.finished_at = now
    if job.started_at is None:
        job.started_at = now
    webhooks.job_ended(s, job)  # the outbox row commits with the final state
    return state.value


def expire_job(store: Store, job_id: str) -> bool:
    """Past its deadline: stop scheduling, mark items without a result `expired`."""
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.state not in LIVE_JOB_STATES:
            return False
        s.execute(
            update(Task)
            .where(Task.job_id == job_id, Task.state.in_(OPEN_TASK_STATES))
            .values(
                state=TaskState.CANCELLED.value,
                finished_at=utcnow(),
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
            )
        )
        # Tasks first, then the job (the lock order in dialect.py); a job that ended
        # meanwhile in another process (its last task, a cancel) stays as it ended.
        dialect.lock_job(s, job_id)
        s.refresh(job)
        if job.state not in LIVE_JOB_STATES:
            s.rollback()
            return False
        _fill_missing_results(
            s, job_id, ResultStatus.EXPIRED, "the job's deadline passed before this item ran"
        )
        job.state = JobState.EXPIRED.value
        job.finished_at = utcnow()
        webhooks.job_ended(s, job)
        return True


def live_jobs(store: Store) -> list[tuple[str, datetime | None]]:
    """(job id, deadline) of every queued or running job: what the reconciler expires
    or finalises."""
    with store.read() as s:
        return list(
            s.execute(select(Job.id, Job.deadline_at).where(Job.state.in_(LIVE_JOB_STATES)))
            .tuples()
            .all()
        )
