"""Storing a submission: the job row, its items and tasks window by window, and the
bookkeeping that tells a live submission from an abandoned one.

A job is created `submitting` and becomes `queued` with `open_job` once every item is
stored; until then it is never finalised or listed (see JobState).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from genqueue.storage import dialect
from genqueue.storage.db import Store, utcnow
from genqueue.storage.errors import JobStateError
from genqueue.storage.lifecycle import finalize_job_in
from genqueue.storage.models import (
    DEFAULT_TENANT,
    Batch,
    Item,
    Job,
    JobState,
    ResultStatus,
    Task,
    TaskState,
)
from genqueue.storage.results import NewResult, row_values
from genqueue.storage.text import clean_text


@dataclass(frozen=True)
class NewItem:
    #: 0-based position in the input (of the whole batch, for a job that is part of one).
    idx: int
    line: int
    custom_id: str
    prompt: str
    params: dict[str, Any] | None = None
    messages: list[dict[str, str]] | None = None
    #: (error code, message) of an item the scheduler failed at submission (its prompt
    #: cannot fit the model): stored with its result, in a task that is already done.
    rejected: tuple[str, str] | None = None


#: The `worker` of results the scheduler wrote itself (items failed at submission).
SCHEDULER_WORKER = "scheduler"


def new_job_id() -> str:
    return uuid.uuid4().hex


#: Batch ids say what they are (jobs' are bare hex): "batch_" + 26 hex digits.
BATCH_PREFIX = "batch_"


def new_batch_id() -> str:
    return BATCH_PREFIX + uuid.uuid4().hex[:26]


def create_batch(
    store: Store,
    *,
    input_name: str | None,
    meta: dict[str, Any],
    options: dict[str, Any],
    idempotency_key: str | None = None,
    tenant: str = DEFAULT_TENANT,
    **api_fields: Any,
) -> Batch | str:
    """Insert a batch (its jobs are created as its input names their models). With an
    idempotency key that already exists, return the existing batch's id instead.
    `api_fields` are the OpenAI fields of a batch created through the API (endpoint,
    completion_window, input_file_id, phase)."""
    if idempotency_key:
        with store.read() as s:
            found = s.scalar(select(Batch.id).where(Batch.idempotency_key == idempotency_key))
        if found:
            return found
    batch = Batch(
        id=new_batch_id(),
        created_at=utcnow(),
        input_name=input_name,
        meta=meta,
        options=options,
        idempotency_key=idempotency_key,
        tenant=tenant,
        **api_fields,
    )
    try:
        with store.session() as s:
            s.add(batch)
    except IntegrityError:
        with store.read() as s:
            found = s.scalar(select(Batch.id).where(Batch.idempotency_key == idempotency_key))
        if found:
            return found
        raise
    return batch


def create_job(store: Store, **fields: Any) -> Job | str:
    """Insert a job in the internal `submitting` state. With an idempotency key that
    already exists, return the existing job's id instead."""
    key = fields.get("idempotency_key")
    if key:
        existing = find_by_idempotency_key(store, key)
        if existing:
            return existing
    now = utcnow()
    job = Job(
        id=new_job_id(),
        state=JobState.SUBMITTING.value,
        created_at=now,
        loaded_at=now,
        **fields,
    )
    try:
        with store.session() as s:
            batch_id = fields.get("batch_id")
            if batch_id and s.scalar(select(Batch.cancelling_at).where(Batch.id == batch_id)):
                # A batch cancelled while its file is read: a job for a model met only
                # now starts stopped, like the batch's other jobs (see stop_job).
                job.cancel_requested = True
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
    store: Store, job: Job, items: Sequence[NewItem], tasks: Sequence[Sequence[int]]
) -> list[int]:
    """Insert a window of items and the tasks that group them, in one transaction.
    `tasks` lists, per task, the positions (into `items`) of its items; rejected items
    belong to no task of it, and go into one task that is done already, with their
    results. Returns the new (pending) task ids, in `tasks` order."""
    rejected = [pos for pos, it in enumerate(items) if it.rejected is not None]
    with store.session() as s:
        _touch(s, job.id)
        task_ids = (
            list(
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
            if tasks
            else []
        )
        owner = [0] * len(items)
        for task_id, members in zip(task_ids, tasks, strict=True):
            for pos in members:
                owner[pos] = task_id
        if rejected:
            done = _rejected_task(s, job, [items[pos] for pos in rejected])
            for pos in rejected:
                owner[pos] = done
        dialect.insert_items(
            s,
            [
                (
                    job.id,
                    it.idx,
                    it.line,
                    clean_text(it.custom_id),
                    clean_text(it.prompt),
                    it.params,
                    owner[pos],
                    _clean_messages(it.messages),
                )
                for pos, it in enumerate(items)
            ],
        )
    return task_ids


def _rejected_task(s: Session, job: Job, items: Sequence[NewItem]) -> int:
    """A done task holding items failed at submission, and their results."""
    now = utcnow()
    task_id = s.scalar(
        insert(Task)
        .values(
            job_id=job.id,
            priority=job.priority,
            n_items=len(items),
            n_failed=len(items),
            state=TaskState.DONE.value,
            finished_at=now,
        )
        .returning(Task.id)
    )
    assert task_id is not None
    rows = []
    for it in items:
        assert it.rejected is not None
        code, message = it.rejected
        failed = NewResult(
            idx=it.idx, status=ResultStatus.FAILED, error_code=code, error_message=message
        )
        rows.append(row_values(failed))
    dialect.insert_results(s, (job.id, task_id, 0, SCHEDULER_WORKER, now), rows)
    return task_id


def _clean_messages(messages: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
    if messages is None:
        return None
    return [{k: clean_text(v) or "" for k, v in m.items()} for m in messages]


def duplicate_custom_ids(
    store: Store, job_ids: Sequence[str], limit: int = 20
) -> list[tuple[str, list[int]]]:
    """custom_ids used more than once across these jobs (one job, or a batch's), with
    the input lines that use them."""
    in_jobs = Item.job_id.in_(list(job_ids))
    with store.read() as s:
        dups = (
            s.execute(
                select(Item.custom_id)
                .where(in_jobs)
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
                select(Item.line).where(in_jobs, Item.custom_id == cid).order_by(Item.idx).limit(10)
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
        if total_items >= 10_000:
            dialect.analyze(s, ("items", "tasks"))
        # Its workers may have finished it during the load, or it had nothing to run
        # (every item was failed at submission).
        finalize_job_in(s, job_id)


def _touch(s: Session, job_id: str) -> None:
    jobs_t = Job.__table__
    res = s.connection().execute(
        update(jobs_t)
        .where(jobs_t.c.id == job_id, jobs_t.c.state == JobState.SUBMITTING.value)
        .values(loaded_at=utcnow())
    )
    if not res.rowcount:
        raise JobStateError(
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
            s.scalars(
                select(Job.id).where(
                    Job.state == JobState.SUBMITTING.value, Job.loaded_at < silent_since
                )
            )
        )
