"""Poison isolation: a task that keeps killing (or hanging) its worker is split in two,
again and again, until the item to blame is alone; that item then fails with
`attempts_exhausted` and everything else completes.

An item's attempts are its task lineage's: the attempts of its task and of the tasks it
was split from (there is no per-item counter to update on every claim).
"""

from __future__ import annotations

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from genqueue.storage.claims import missing_items
from genqueue.storage.db import utcnow
from genqueue.storage.models import Item, Result, ResultStatus, Task, TaskState


def isolate_poison(s: Session, task: Task, why: str) -> list[int]:
    """A task that exhausted its attempts: split its remaining items in two new tasks
    (each starts with fresh attempts), or, for a single item, fail that item."""
    items = missing_items(s, task.id, task.job_id, with_result=1)  # read the rows
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
    tries = _lineage_attempts(s, task)
    for item in items:
        s.execute(
            insert(Result),
            [
                {
                    "job_id": task.job_id,
                    "idx": item.idx,
                    "task_id": task.id,
                    "status": ResultStatus.FAILED.value,
                    "error_code": "attempts_exhausted",
                    "error_message": (
                        f"this item stopped its worker {tries} time(s) (crash, kill or "
                        f"timeout; {why}); it was isolated and failed so the rest of the job could "
                        "finish. Check the input, lower max_new_tokens, or retry the job."
                    ),
                    "attempt": tries,
                    "created_at": now,
                }
            ],
        )
        task.n_failed += 1
    return []


def _lineage_attempts(s: Session, task: Task) -> int:
    """Attempts an item of `task` went through: the task's, plus those of the tasks it was
    split from (an item left without a result was in every one of them). Counting them
    here, once, spares every claim an UPDATE of its items."""
    total, parent = task.attempts, task.parent_id
    while parent is not None:
        row = s.execute(
            select(Task.attempts, Task.parent_id).where(Task.id == parent)
        ).one_or_none()
        if row is None:
            break
        total += row.attempts
        parent = row.parent_id
    return total
