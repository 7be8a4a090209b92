"""The end of a worker's attempt at a task, in one transaction.

A task's last micro-batch of results, the end of its attempt and lease, and, when it was
the job's last open task, the job's final state commit together. Besides being one
commit instead of three per task (the pipeline's own cost per item), this means a reader
never sees a task done without its results, or a job whose last task is done but which
is still running.

A worker that holds its next task (prefetched) begins that task's attempt in the same
transaction: one commit per task again, and the previous task is safely recorded
before any work on the next one starts, so a poison item in the next task can never
cost the previous one its results or an attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from genqueue.storage import jobs
from genqueue.storage.db import Store
from genqueue.storage.leases import Claim, begin_in, finish_in
from genqueue.storage.models import Job, Task, TaskState
from genqueue.storage.results import NewResult, count_duplicates, insert_rows, task_exists


@dataclass(frozen=True)
class Completed:
    written: int
    duplicates: int
    task_state: str  # done | queued (released: re-send it) | cancelled | ... (lease lost)
    job_state: str | None  # the job's final state when this ended it, else None
    began_next: bool | None = None  # whether `begin_next` began (None: not asked)


def complete_task(
    store: Store,
    claim: Claim,
    results: Sequence[NewResult],
    *,
    outcome: str,
    engine: str | None = None,
    model_revision: str | None = None,
    error: str | None = None,
    begin_next: Claim | None = None,
) -> Completed:
    """Write `results` (idempotently), finish the attempt, finalise the job if no task
    of it is open any more, and begin the attempt of `begin_next` (see begin_attempt)."""
    with store.session() as s:
        if store.dialect == "postgresql" and begin_next is not None:
            # Both task rows, in id order: a rejected submission's delete_job locks a
            # job's tasks in the same order, so the two cannot deadlock.
            ids = sorted({claim.task_id, begin_next.task_id})
            s.connection().execute(
                select(Task.__table__.c.id)
                .where(Task.__table__.c.id.in_(ids))
                .order_by(Task.__table__.c.id)
                .with_for_update(key_share=True)
            ).all()
        if not task_exists(s, store.dialect, claim.task_id):
            # Its job was rejected and removed while this task ran: nothing to keep.
            began = begin_in(s, begin_next) if begin_next is not None else None
            return Completed(0, 0, "gone", None, began)
        ins = insert_rows(s, store.dialect, claim, results)
        count_duplicates(s.connection(), claim.job_id, ins.duplicates)
        state = finish_in(
            s,
            store.dialect,
            claim,
            outcome=outcome,
            engine=engine,
            model_revision=model_revision,
            error=error,
            written=(ins.written, ins.duplicates, ins.succeeded, ins.failed),
        )
        job_state = None
        if state in (TaskState.DONE.value, TaskState.CANCELLED.value):
            if store.dialect == "postgresql":
                # Two workers finishing a job's last two tasks at once would each still
                # see the other's task open (read committed) and neither would finalise
                # the job. Queueing on the job row makes the second one see the first.
                # NO KEY UPDATE: it must not wait for the KEY SHARE locks that inserting
                # results (foreign key to jobs) takes, or two finishers would deadlock.
                s.connection().execute(
                    select(Job.__table__.c.id)
                    .where(Job.__table__.c.id == claim.job_id)
                    .with_for_update(key_share=True)
                )
            job_state = jobs.finalize_in(s, claim.job_id)
        began = begin_in(s, begin_next) if begin_next is not None else None
        return Completed(ins.written, ins.duplicates, state, job_state, began)
