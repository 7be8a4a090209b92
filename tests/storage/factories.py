"""Jobs, items and results for storage tests, built through storage's own functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from genqueue.storage import loading
from genqueue.storage.claims import Claim
from genqueue.storage.completion import complete_task
from genqueue.storage.db import Store
from genqueue.storage.models import Batch, Job, ResultStatus, Task
from genqueue.storage.results import NewResult


def new_job(store: Store, chunk: int = 4, **fields: Any) -> Job:
    """A job still being submitted (no items yet); `fields` override the job's columns."""
    values: dict[str, Any] = {
        "kind": "generate",
        "model": "m",
        "queue": "q",
        "params": {},
        "chunk_size": chunk,
        "priority": 5,
        "meta": {},
        "options": {},
    }
    job = loading.create_job(store, **{**values, **fields})
    assert isinstance(job, Job)
    return job


def api_batch(store: Store, **fields: Any) -> Batch:
    """A batch made through the OpenAI API, still `validating`; `fields` override."""
    values: dict[str, Any] = {
        "input_name": "in.jsonl",
        "meta": {},
        "options": {},
        "endpoint": "/v1/completions",
        "phase": "validating",
    }
    batch = loading.create_batch(store, **{**values, **fields})
    assert isinstance(batch, Batch)
    return batch


def make_job(
    store: Store,
    n: int = 10,
    chunk: int = 4,
    *,
    prompt: Callable[[int], str] = "p{}".format,
    **fields: Any,
) -> Job:
    """A stored, open job of `n` items (prompt(i) each) in tasks of `chunk` items."""
    job = new_job(store, chunk, **fields)
    items = [
        loading.NewItem(idx=i, line=i + 1, custom_id=f"c{i}", prompt=prompt(i)) for i in range(n)
    ]
    plan = [list(range(i, min(n, i + chunk))) for i in range(0, n, chunk)]
    loading.add_chunk(store, job, items, plan)
    loading.open_job(store, job.id, n)
    return job


def task_ids(store: Store, job_id: str) -> list[int]:
    with store.session() as s:
        return [t.id for t in s.query(Task).filter_by(job_id=job_id).order_by(Task.id)]


def ok(idx: int, text: str = "out") -> NewResult:
    return NewResult(
        idx=idx,
        status=ResultStatus.SUCCEEDED,
        output=text,
        finish_reason="length",
        prompt_tokens=3,
        completion_tokens=4,
    )


def finish(store: Store, claim: Claim, outcome: str) -> str:
    """End a claim's attempt with no further results; returns the task's new state."""
    return complete_task(store, claim, [], outcome=outcome).task_state


def run_job(store: Store, job: Job, *, fail: frozenset[int] | set[int] = frozenset()) -> None:
    """Claim and complete every claimable task of a job, as a worker would: the items
    in `fail` fail, the others succeed."""
    from genqueue.storage.leases import claim_task

    for tid in task_ids(store, job.id):
        claim = claim_task(store, tid, "w1", lease_seconds=30, max_attempts=3)
        if not isinstance(claim, Claim):
            continue  # done already, or split
        rows = [
            NewResult(idx=i.idx, status=ResultStatus.FAILED, error_code="x", error_message="x")
            if i.idx in fail
            else ok(i.idx)
            for i in claim.items
        ]
        complete_task(store, claim, rows, outcome="done")
