"""Job-level operations: create, load items and tasks in batches, counts, cancel, finalise."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from genqueue.storage.db import Store, as_utc, utcnow
from genqueue.storage.errors import JobNotFound, StorageError
from genqueue.storage.models import (
    FINAL_JOB_STATES,
    OPEN_TASK_STATES,
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
from genqueue.storage.text import clean_text


@dataclass(frozen=True)
class NewItem:
    line: int
    custom_id: str
    prompt: str
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobCounts:
    total: int
    succeeded: int
    failed: int
    running: int
    pending: int
    cancelled: int = 0
    expired: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled + self.expired


@dataclass(frozen=True)
class JobView:
    """A job as users see it: its row plus live counts."""

    job: Job
    counts: JobCounts

    def to_dict(self) -> dict[str, Any]:
        j = self.job

        def ts(value: datetime | None) -> str | None:
            value = as_utc(value)
            return value.isoformat() if value else None

        return {
            "job_id": j.id,
            "state": j.state,
            "kind": j.kind,
            "model": j.model,
            "revision": j.revision,
            "engine": j.engine,
            "priority": j.priority,
            "chunk_size": j.chunk_size,
            "params": j.params,
            "template": j.template,
            "metadata": j.meta,
            "input": j.input_name,
            "counts": {
                "total": self.counts.total,
                "succeeded": self.counts.succeeded,
                "failed": self.counts.failed,
                "running": self.counts.running,
                "pending": self.counts.pending,
                "cancelled": self.counts.cancelled,
                "expired": self.counts.expired,
            },
            "duplicate_executions": j.duplicate_executions,
            "error": j.error,
            "created_at": ts(j.created_at),
            "started_at": ts(j.started_at),
            "finished_at": ts(j.finished_at),
            "deadline_at": ts(j.deadline_at),
        }


def new_job_id() -> str:
    return uuid.uuid4().hex


def create_job(store: Store, **fields: Any) -> Job | str:
    """Insert a job in the internal `submitting` state. With an idempotency key that
    already exists, return the existing job's id instead."""
    key = fields.get("idempotency_key")
    if key:
        existing = find_by_idempotency_key(store, key)
        if existing:
            return existing
    now = utcnow()
    job = Job(id=new_job_id(), state=SUBMITTING, created_at=now, loaded_at=now, **fields)
    try:
        with store.session() as s:
            s.add(job)
    except IntegrityError:
        # Another submitter with the same key won the race.
        if key and (existing := find_by_idempotency_key(store, key)):
            return existing
        raise
    return job


def find_by_idempotency_key(store: Store, key: str) -> str | None:
    with store.read() as s:
        return s.scalar(select(Job.id).where(Job.idempotency_key == key))


def add_chunk(
    store: Store, job: Job, first_idx: int, items: Sequence[NewItem], tasks: Sequence[Sequence[int]]
) -> list[int]:
    """Insert a window of items and the tasks that group them, in one transaction.
    `tasks` lists, per task, the positions (into `items`) of its items. Returns the new
    task ids, in `tasks` order."""
    with store.session() as s:
        _touch(s, job.id)
        task_ids = list(
            s.scalars(
                insert(Task).returning(Task.id, sort_by_parameter_order=True),
                [
                    {
                        "job_id": job.id,
                        "priority": job.priority,
                        "n_items": len(members),
                        "state": TaskState.PENDING.value,
                    }
                    for members in tasks
                ],
            )
        )
        owner = [0] * len(items)
        for task_id, members in zip(task_ids, tasks, strict=True):
            for pos in members:
                owner[pos] = task_id
        conn = s.connection()
        if store.dialect == "sqlite":
            # Straight to the driver's executemany: values are plain already (params
            # JSON-encoded here), and the ORM's per-row processing cost more than SQLite.
            conn.exec_driver_sql(
                "INSERT INTO items (job_id, idx, line, custom_id, prompt, params, task_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        job.id,
                        first_idx + pos,
                        it.line,
                        clean_text(it.custom_id),
                        clean_text(it.prompt),
                        json.dumps(it.params) if it.params is not None else None,
                        owner[pos],
                    )
                    for pos, it in enumerate(items)
                ],
            )
        else:
            conn.execute(
                insert(Item.__table__),
                [
                    {
                        "job_id": job.id,
                        "idx": first_idx + pos,
                        "line": it.line,
                        "custom_id": clean_text(it.custom_id),
                        "prompt": clean_text(it.prompt),
                        "params": it.params,
                        "task_id": owner[pos],
                    }
                    for pos, it in enumerate(items)
                ],
            )
    return task_ids


def duplicate_custom_ids(store: Store, job_id: str, limit: int = 20) -> list[tuple[str, list[int]]]:
    """custom_ids used more than once in a job, with the input lines that use them."""
    with store.read() as s:
        dups = (
            s.execute(
                select(Item.custom_id)
                .where(Item.job_id == job_id)
                .group_by(Item.custom_id)
                .having(func.count() > 1)
                .limit(limit)
            )
            .scalars()
            .all()
        )
        out = []
        for cid in dups:
            lines = s.scalars(
                select(Item.line)
                .where(Item.job_id == job_id, Item.custom_id == cid)
                .order_by(Item.idx)
                .limit(10)
            ).all()
            out.append((cid, list(lines)))
        return out


def open_job(store: Store, job_id: str, total_items: int, *, chunk_size: int | None = None) -> None:
    """Make a fully loaded job visible to dispatch and the reconciler (recording the
    task size it was planned with, when given). Workers may have started on its first
    windows already: the job is then running, or even finished."""
    values: dict[str, Any] = {"state": JobState.QUEUED.value, "total_items": total_items}
    if chunk_size is not None:
        values["chunk_size"] = chunk_size
    with store.session() as s:
        _touch(s, job_id)  # still there (not taken for abandoned)
        started = s.scalar(
            select(func.min(Task.started_at)).where(
                Task.job_id == job_id, Task.started_at.is_not(None)
            )
        )
        if started is not None:
            values.update(state=JobState.RUNNING.value, started_at=started)
        s.execute(update(Job).where(Job.id == job_id).values(**values))
        if store.dialect == "postgresql" and total_items >= 10_000:
            # Fresh statistics, so claims use the task index from the first task on
            # (autovacuum would catch up only later).
            s.execute(text("ANALYZE items"))
            s.execute(text("ANALYZE tasks"))
        if started is not None:
            finalize_in(s, job_id)  # its workers may have finished it during the load


def stop_job(store: Store, job_id: str) -> None:
    """Stop a job's work without ending it (a submission being rejected): claims are
    refused and running tasks stop after their micro-batch."""
    with store.session() as s:
        _stop_in(s, job_id)


def _stop_in(s: Session, job_id: str) -> None:
    """Ask the job to stop: tasks not yet running are cancelled; running ones see
    `cancel_requested` and stop after their in-flight micro-batch."""
    s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    s.execute(
        update(Task)
        .where(
            Task.job_id == job_id,
            Task.state.in_([TaskState.PENDING.value, TaskState.QUEUED.value]),
        )
        .values(state=TaskState.CANCELLED.value, finished_at=utcnow())
    )


def _touch(s: Session, job_id: str) -> None:
    jobs_t = Job.__table__
    res = s.connection().execute(
        update(jobs_t)
        .where(jobs_t.c.id == job_id, jobs_t.c.state == SUBMITTING)
        .values(loaded_at=utcnow())
    )
    if not res.rowcount:
        raise StorageError(
            f"job {job_id} was removed while it was being submitted: nothing was stored "
            "for longer than GENQUEUE_SUBMIT_STALL_SECONDS, so the reconciler took the "
            "submission for abandoned. Submit again (raise that setting for slow inputs)."
        )


def touch_submission(store: Store, job_id: str) -> None:
    """Tell the reconciler a submission is alive while it reads a slow input."""
    with store.session() as s:
        _touch(s, job_id)


def abandoned_submissions(store: Store, *, silent_since: datetime) -> list[str]:
    """Jobs still being submitted whose submitter stored nothing since `silent_since`:
    it died mid-load (the rest of the input is gone with it)."""
    with store.read() as s:
        return list(
            s.scalars(select(Job.id).where(Job.state == SUBMITTING, Job.loaded_at < silent_since))
        )


def delete_job(store: Store, job_id: str) -> None:
    """Remove a job and everything under it (used when a submission is rejected). A
    worker still finishing one of its tasks finds the task gone and drops its results."""
    stop_job(store, job_id)
    with store.session() as s:
        # Tasks first, locked in id order (as a finishing worker locks its own and its
        # next task): it waits for a worker finishing one, then removes its results too.
        if store.dialect == "postgresql":
            s.execute(
                select(Task.id).where(Task.job_id == job_id).order_by(Task.id).with_for_update()
            ).all()
        for model in (Task, Result, Item, Attempt):
            s.execute(delete(model).where(model.job_id == job_id))
        s.execute(delete(Job).where(Job.id == job_id))


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def job_counts(session: Session, job: Job) -> JobCounts:
    row = session.execute(
        select(
            func.coalesce(func.sum(Task.n_succeeded), 0),
            func.coalesce(func.sum(Task.n_failed), 0),
        ).where(Task.job_id == job.id)
    ).one()
    succeeded, failed = int(row[0]), int(row[1])
    running = int(
        session.scalar(
            select(
                func.coalesce(func.sum(Task.n_items - Task.n_succeeded - Task.n_failed), 0)
            ).where(Task.job_id == job.id, Task.state == TaskState.RUNNING.value)
        )
        or 0
    )
    cancelled = expired = 0
    if job.state in (JobState.CANCELLED.value, JobState.EXPIRED.value) or job.cancel_requested:
        by_status: dict[str, int] = dict(
            session.execute(
                select(Result.status, func.count())
                .where(
                    Result.job_id == job.id,
                    Result.status.in_([ResultStatus.CANCELLED.value, ResultStatus.EXPIRED.value]),
                )
                .group_by(Result.status)
            )
            .tuples()
            .all()
        )
        cancelled = int(by_status.get(ResultStatus.CANCELLED.value, 0))
        expired = int(by_status.get(ResultStatus.EXPIRED.value, 0))
    pending = max(0, job.total_items - succeeded - failed - running - cancelled - expired)
    return JobCounts(job.total_items, succeeded, failed, running, pending, cancelled, expired)


def view_job(store: Store, job_id: str) -> JobView:
    with store.read() as s:
        job = get_job(s, job_id)
        return JobView(job, job_counts(s, job))


def list_jobs(store: Store, limit: int = 50, state: str | None = None) -> list[JobView]:
    with store.read() as s:
        q = select(Job).where(Job.state != SUBMITTING).order_by(Job.created_at.desc()).limit(limit)
        if state:
            q = q.where(Job.state == state)
        return [JobView(j, job_counts(s, j)) for j in s.scalars(q).all()]


def request_cancel(store: Store, job_id: str) -> bool:
    """Ask a job to stop: tasks not yet running are cancelled now; running ones stop after
    their in-flight micro-batch. Returns False when the job had already finished."""
    with store.session() as s:
        job = get_job(s, job_id)
        if job.state in FINAL_JOB_STATES:
            return False
        if job.state == SUBMITTING:
            raise StorageError(
                f"job {job_id} is still being submitted; cancel it once its submission "
                "has finished (windows stored after a cancel would never run or end)"
            )
        _stop_in(s, job_id)
    finalize_job(store, job_id)
    return True


def _fill_missing_results(s: Session, job_id: str, status: ResultStatus, message: str) -> None:
    """Give every item without a result a final `status` result (cancelled/expired)."""
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
            insert(Result),
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
    Safe to call from any process at any time (conditional update)."""
    with store.session() as s:
        return finalize_in(s, job_id)


def finalize_in(s: Session, job_id: str) -> str | None:
    """`finalize_job` inside the caller's transaction (a worker folds it into the
    transaction that finishes the job's last task)."""
    open_tasks = s.connection().scalar(
        select(func.count())
        .select_from(Task.__table__)
        .where(Task.__table__.c.job_id == job_id, Task.__table__.c.state.in_(OPEN_TASK_STATES))
    )
    if open_tasks:
        return None  # the common case, answered from the (job_id, state) index alone
    job = s.get(Job, job_id)
    if job is None or job.state in FINAL_JOB_STATES or job.state == SUBMITTING:
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
    return state.value


def expire_job(store: Store, job_id: str) -> bool:
    """Past its deadline: stop scheduling, mark items without a result `expired`."""
    with store.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.state in FINAL_JOB_STATES or job.state == SUBMITTING:
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
        _fill_missing_results(
            s, job_id, ResultStatus.EXPIRED, "the job's deadline passed before this item ran"
        )
        job.state = JobState.EXPIRED.value
        job.finished_at = utcnow()
        return True


RETRYABLE = (ResultStatus.FAILED.value, ResultStatus.CANCELLED.value, ResultStatus.EXPIRED.value)


def retry_items(
    store: Store,
    job_id: str,
    statuses: Sequence[str] = RETRYABLE,
    deadline_at: datetime | None = None,
) -> int:
    """Re-run a finished job's failed/cancelled/expired items in the same job, keeping its
    successes. Their results are removed, they get new tasks (fresh attempts) and the job
    is queued again. Returns the number of items re-queued (the caller dispatches)."""
    bad = [s for s in statuses if s not in RETRYABLE]
    if bad:
        raise StorageError(f"cannot retry items in status {bad}; retryable: {', '.join(RETRYABLE)}")
    with store.session() as s:
        job = get_job(s, job_id)
        if not JobState(job.state).final:
            raise StorageError(
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
        for task_id, n in failed_by_task.items():
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
        return len(idxs)
