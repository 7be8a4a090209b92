"""Results: idempotent writes (first writer wins) and ordered streaming reads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from genqueue.storage.db import Store, utcnow
from genqueue.storage.leases import Claim
from genqueue.storage.models import Attempt, Item, Job, Result, ResultStatus, Task
from genqueue.storage.text import clean_text

#: Results a job's end gives to items that never ran.
ENDED_WITHOUT_RUNNING = (ResultStatus.CANCELLED.value, ResultStatus.EXPIRED.value)


@dataclass(frozen=True)
class NewResult:
    idx: int
    status: ResultStatus
    output: str | None = None
    outputs: list[str] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    truncated: bool = False
    latency_ms: float | None = None


def write_results(store: Store, claim: Claim, results: Sequence[NewResult]) -> tuple[int, int]:
    """Insert results; a row that already exists is kept (first writer wins) and counted
    as a duplicate execution. Returns (written, duplicates)."""
    if not results:
        return 0, 0
    now = utcnow()
    rows = [
        {
            "job_id": claim.job_id,
            "idx": r.idx,
            "status": r.status.value,
            "output": clean_text(r.output),
            "outputs": [clean_text(o) for o in r.outputs] if r.outputs is not None else None,
            "finish_reason": r.finish_reason,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "error_code": r.error_code,
            "error_message": clean_text(r.error_message),
            "truncated": r.truncated,
            "task_id": claim.task_id,
            "attempt": claim.attempt,
            "worker": claim.worker,
            "latency_ms": r.latency_ms,
            "created_at": now,
        }
        for r in results
    ]
    dialect = postgresql if store.dialect == "postgresql" else sqlite
    stmt = (
        dialect.insert(Result)
        .on_conflict_do_nothing(index_elements=["job_id", "idx"])
        .returning(Result.idx, Result.status)
    )
    with store.session() as s:
        inserted = s.execute(stmt, rows).all()
        ok = sum(1 for row in inserted if row.status == ResultStatus.SUCCEEDED.value)
        bad = len(inserted) - ok
        dups = len(rows) - len(inserted)
        if dups:
            # A conflict with a `cancelled`/`expired` row is not a second execution:
            # the job ended (a deadline) while this micro-batch ran, and its result is
            # dropped. Only conflicts with a real result count as duplicates.
            done = {row.idx for row in inserted}
            dups -= (
                s.scalar(
                    select(func.count())
                    .select_from(Result)
                    .where(
                        Result.job_id == claim.job_id,
                        Result.idx.in_([r.idx for r in results if r.idx not in done]),
                        Result.status.in_(ENDED_WITHOUT_RUNNING),
                    )
                )
                or 0
            )
        s.execute(
            update(Task)
            .where(Task.id == claim.task_id)
            .values(n_succeeded=Task.n_succeeded + ok, n_failed=Task.n_failed + bad)
        )
        s.execute(
            update(Attempt)
            .where(Attempt.id == claim.attempt_id)
            .values(
                items_written=Attempt.items_written + len(inserted),
                duplicates=Attempt.duplicates + dups,
            )
        )
        if dups:
            s.execute(
                update(Job)
                .where(Job.id == claim.job_id)
                .values(duplicate_executions=Job.duplicate_executions + dups)
            )
    return len(inserted), dups


@dataclass(frozen=True)
class ResultRow:
    """One line of a job's results, in input order (items without a result yet are
    reported `pending`)."""

    index: int
    custom_id: str
    status: str
    output: str | None
    outputs: list[str] | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    error_code: str | None
    error_message: str | None
    truncated: bool

    def to_record(self) -> dict[str, Any]:
        """The documented result-line format (JSONL)."""
        rec: dict[str, Any] = {
            "custom_id": self.custom_id,
            "index": self.index,
            "status": self.status,
        }
        if self.outputs is not None:
            rec["outputs"] = self.outputs
            rec["output"] = self.outputs[0] if self.outputs else None
        else:
            rec["output"] = self.output
        rec["finish_reason"] = self.finish_reason
        rec["usage"] = (
            {
                "prompt_tokens": self.prompt_tokens or 0,
                "completion_tokens": self.completion_tokens or 0,
            }
            if self.status == ResultStatus.SUCCEEDED.value
            else None
        )
        rec["error"] = (
            {"code": self.error_code, "message": self.error_message} if self.error_code else None
        )
        if self.truncated:
            rec["truncated"] = True
        return rec


def iter_results(
    store: Store, job_id: str, *, include_pending: bool = False, batch: int = 5000
) -> Iterator[ResultRow]:
    """Stream a job's results in input order with bounded memory (keyset pagination, so
    a 10M-item job never sits in one cursor or in memory)."""
    last = -1
    while True:
        with store.read() as s:
            q = (
                select(
                    Item.idx,
                    Item.custom_id,
                    Result.status,
                    Result.output,
                    Result.outputs,
                    Result.finish_reason,
                    Result.prompt_tokens,
                    Result.completion_tokens,
                    Result.error_code,
                    Result.error_message,
                    Result.truncated,
                )
                .select_from(Item)
                .join(
                    Result,
                    (Result.job_id == Item.job_id) & (Result.idx == Item.idx),
                    isouter=include_pending,
                )
                .where(Item.job_id == job_id, Item.idx > last)
                .order_by(Item.idx)
                .limit(batch)
            )
            rows = s.execute(q).all()
        if not rows:
            return
        for r in rows:
            yield ResultRow(
                index=r.idx,
                custom_id=r.custom_id,
                status=r.status or "pending",
                output=r.output,
                outputs=r.outputs,
                finish_reason=r.finish_reason,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                error_code=r.error_code,
                error_message=r.error_message,
                truncated=bool(r.truncated),
            )
        last = rows[-1].idx
