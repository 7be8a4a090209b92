"""Finding results to reuse: succeeded results with a given reuse key (see
genqueue.worker.reuse for what the key covers), within the tenant of the job asking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, tuple_

from genqueue.storage.db import Store
from genqueue.storage.models import Job, Result, ResultStatus
from genqueue.storage.results import NewResult

#: What a copy takes from the result it copies (the rest is the copy's own).
_COPIED = (
    "output",
    "outputs",
    "finish_reason",
    "finish_reasons",
    "prompt_tokens",
    "completion_tokens",
    "truncated",
    "raw_output",
    "raw_outputs",
    "parsed",
    "incomplete",
    "logprobs",
    "choice_scores",
    "reuse_key",
)
#: Keys looked up per statement (bound parameters stay well under every limit).
_PER_QUERY = 500


def find_reusable(store: Store, job_id: str, keys: Sequence[str]) -> dict[str, Any]:
    """{key: a succeeded result row with that key} for the keys that have one, among
    the results of jobs of the same tenant as `job_id`."""
    if not keys:
        return {}
    tenant = select(Job.tenant).where(Job.id == job_id).scalar_subquery()
    picked: dict[str, tuple[str, int]] = {}
    with store.read() as s:
        for start in range(0, len(keys), _PER_QUERY):
            part = list(keys[start : start + _PER_QUERY])
            rows = s.execute(
                select(Result.reuse_key, Result.job_id, Result.idx)
                .join(Job, Job.id == Result.job_id)
                .where(
                    Result.reuse_key.in_(part),
                    Result.status == ResultStatus.SUCCEEDED.value,
                    Job.tenant == tenant,
                )
            ).all()
            for key, src_job, src_idx in rows:
                picked.setdefault(key, (src_job, src_idx))
        if not picked:
            return {}
        cols = [getattr(Result, c) for c in _COPIED]
        found: dict[str, Any] = {}
        pairs = list(picked.values())
        for start in range(0, len(pairs), _PER_QUERY):
            q = select(Result.job_id, Result.reused_from, *cols).where(
                tuple_(Result.job_id, Result.idx).in_(pairs[start : start + _PER_QUERY])
            )
            for row in s.execute(q).all():
                found.setdefault(row.reuse_key, row)
        return found


def copy_of(row: Any, *, idx: int) -> NewResult:
    """A new result for item `idx` that copies the stored result `row` (from
    `find_reusable`), saying where it came from (the job that generated it)."""
    values = {c: getattr(row, c) for c in _COPIED}
    values["truncated"] = bool(values["truncated"])
    return NewResult(
        idx=idx,
        status=ResultStatus.SUCCEEDED,
        latency_ms=0.0,
        reused_from=row.reused_from or row.job_id,
        **values,
    )
