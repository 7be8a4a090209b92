"""What a worker holds while it works on a task: its claim, and the items in it that
still lack a result (what a claim hands the worker, and what completion re-checks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from genqueue.storage import dialect
from genqueue.storage.models import Item, Result


@dataclass(frozen=True)
class ClaimedItem:
    idx: int
    custom_id: str
    prompt: str
    params: dict[str, Any] | None
    messages: list[dict[str, str]] | None = None


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
    #: The job's own chat template (None: the model's, for chat items).
    chat_template: str | None = None
    begun: bool = True  # False: held (prefetched); call begin_attempt before working


@dataclass(frozen=True)
class ClaimRefused:
    """Why a claim did not happen, and tasks created by a split (to be enqueued)."""

    reason: str  # "not_found" | "done" | "leased" | "job_final" | "cancelled" | "split" | "failed"
    new_tasks: tuple[int, ...] = ()
    job_id: str | None = None  # the task's job (to finalise it), when the task exists


_I, _R = Item.__table__, Result.__table__


def missing_items(s: Session, task_id: int, job_id: str, with_result: int) -> list[Any]:
    """A task's items that still lack a result, in input order. `with_result` is the
    task's own count of results (its n_succeeded + n_failed counters, kept in the
    transactions that insert them): on a first claim it is 0 and results are not read."""
    # task_id alone (it is unique across jobs) so the planner takes ix_items_task, not
    # the (job_id, idx) key, which would walk every item of the job per claim.
    conn = s.connection()
    cols = select(_I.c.idx, _I.c.custom_id, _I.c.prompt, _I.c.params, _I.c.messages)
    cols = cols.order_by(_I.c.idx)
    if not with_result:
        return list(conn.execute(cols.where(_I.c.task_id == task_id)).all())
    if dialect.prefers_anti_join(s):
        has_result = exists().where(_R.c.job_id == _I.c.job_id, _R.c.idx == _I.c.idx)
        return list(conn.execute(cols.where(_I.c.task_id == task_id, ~has_result)).all())
    rows = conn.execute(cols.where(_I.c.task_id == task_id)).all()
    done = dialect.with_results(s, job_id, [r.idx for r in rows])
    return [r for r in rows if r.idx not in done]
