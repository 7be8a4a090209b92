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

from genqueue.storage import dialect
from genqueue.storage.claims import Claim
from genqueue.storage.db import Store
from genqueue.storage.leases import begin_in, end_attempt_in
from genqueue.storage.lifecycle import finalize_job_in
from genqueue.storage.models import TaskState
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
    """Write `results` (idempotently), end the attempt, finalise the job if no task of
    it is open any more, and begin the attempt of `begin_next` (see begin_attempt)."""
    with store.session() as s:
        if begin_next is not None:
            # Both task rows, in id order (the lock order in dialect.py).
            dialect.lock_tasks(s, [claim.task_id, begin_next.task_id])
        if not task_exists(s, claim.task_id):
            # Its job was rejected and removed while this task ran: nothing to keep.
            began = begin_in(s, begin_next) if begin_next is not None else None
            return Completed(0, 0, "gone", None, began)
        ins = insert_rows(s, claim, results)
        count_duplicates(s.connection(), claim.job_id, ins.duplicates, ins.reused)
        state = end_attempt_in(
            s,
            claim,
            outcome=outcome,
            engine=engine,
            model_revision=model_revision,
            error=error,
            written=(ins.written, ins.duplicates, ins.succeeded, ins.failed),
        )
        job_state = None
        if state in (TaskState.DONE.value, TaskState.CANCELLED.value):
            dialect.lock_job(s, claim.job_id)
            job_state = finalize_job_in(s, claim.job_id)
        began = begin_in(s, begin_next) if begin_next is not None else None
        return Completed(ins.written, ins.duplicates, state, job_state, began)
