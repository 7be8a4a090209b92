"""Results: idempotent writes (first writer wins) and ordered streaming reads.

Reads come out as `ResultLine`s, the one shape of a result line (genqueue/resultline.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from genqueue.resultline import ResultLine
from genqueue.storage import dialect
from genqueue.storage.claims import Claim
from genqueue.storage.db import Store, as_utc, utcnow
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
    #: Why each of several outputs ended (with one output, finish_reason says it).
    finish_reasons: list[str] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    truncated: bool = False
    latency_ms: float | None = None
    raw_output: str | None = None
    raw_outputs: list[str] | None = None
    parsed: Any = None
    incomplete: bool | None = None
    logprobs: list[Any] | None = None
    choice_scores: dict[str, float] | None = None
    #: See Result.reuse_key / Result.reused_from.
    reuse_key: str | None = None
    reused_from: str | None = None


def write_results(store: Store, claim: Claim, results: Sequence[NewResult]) -> tuple[int, int]:
    """Insert results; a row that already exists is kept (first writer wins) and counted
    as a duplicate execution. Returns (written, duplicates)."""
    if not results:
        return 0, 0
    with store.session() as s:
        if not task_exists(s, claim.task_id):
            return 0, 0  # its job was rejected and removed meanwhile: nothing to keep
        return insert_results(s, claim, results)


def task_exists(s: Session, task_id: int) -> bool:
    """Whether the task still exists, locking its row (PostgreSQL) so that it cannot be
    removed (a rejected submission) before this transaction commits."""
    q = select(_T.c.id).where(_T.c.id == task_id)
    return s.connection().scalar(dialect.for_update(q, s)) is not None


_R, _T, _A, _J = (m.__table__ for m in (Result, Task, Attempt, Job))


def row_values(r: NewResult) -> tuple[Any, ...]:
    """A result's own values in dialect.RESULT_COLUMNS order, ready for the driver."""
    outputs = [clean_text(o) for o in r.outputs] if r.outputs is not None else None
    return (
        r.idx,
        r.status.value,
        clean_text(r.output),
        json.dumps(outputs, ensure_ascii=False) if outputs is not None else None,
        r.finish_reason,
        json.dumps(r.finish_reasons) if r.finish_reasons is not None else None,
        r.prompt_tokens,
        r.completion_tokens,
        r.error_code,
        clean_text(r.error_message),
        r.truncated,
        r.latency_ms,
        clean_text(r.raw_output),
        _json(r.raw_outputs and [clean_text(o) for o in r.raw_outputs]),
        _json(r.parsed),
        r.incomplete,
        _json(r.logprobs),
        _json(r.choice_scores),
        r.reuse_key,
        r.reused_from,
    )


def _json(value: Any) -> str | None:
    """JSON text for a JSON column (None stays NULL)."""
    return None if value is None else json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Inserted:
    written: int  # rows inserted
    duplicates: int  # rows another execution had already written
    succeeded: int  # of the inserted rows
    failed: int
    reused: int = 0  # of the inserted rows: copies of an identical item's result


def insert_rows(s: Session, claim: Claim, results: Sequence[NewResult]) -> Inserted:
    """Insert result rows (first writer wins) without touching any counter."""
    if not results:
        return Inserted(0, 0, 0, 0)
    job_id, conn = claim.job_id, s.connection()
    shared = (job_id, claim.task_id, claim.attempt, claim.worker, utcnow())
    inserted = dialect.insert_results(s, shared, [row_values(r) for r in results])
    ok = sum(1 for row in inserted if row.status == ResultStatus.SUCCEEDED.value)
    bad = len(inserted) - ok
    reused = sum(1 for row in inserted if row.reused_from is not None)
    dups = len(results) - len(inserted)
    if dups:
        # A conflict with a `cancelled`/`expired` row is not a second execution:
        # the job ended (a deadline) while this micro-batch ran, and its result is
        # dropped. Only conflicts with a real result count as duplicates.
        done = {row.idx for row in inserted}
        dups -= (
            conn.scalar(
                select(func.count())
                .select_from(_R)
                .where(
                    _R.c.job_id == job_id,
                    _R.c.idx.in_([r.idx for r in results if r.idx not in done]),
                    _R.c.status.in_(ENDED_WITHOUT_RUNNING),
                )
            )
            or 0
        )
    return Inserted(len(inserted), dups, ok, bad, reused)


def insert_results(s: Session, claim: Claim, results: Sequence[NewResult]) -> tuple[int, int]:
    """`write_results` inside the caller's transaction: one multi-row INSERT plus the
    task's and the attempt's counters (plain statements, no ORM objects)."""
    ins = insert_rows(s, claim, results)
    if not ins.written and not ins.duplicates:
        return 0, 0
    conn = s.connection()
    conn.execute(
        update(_T)
        .where(_T.c.id == claim.task_id)
        .values(n_succeeded=_T.c.n_succeeded + ins.succeeded, n_failed=_T.c.n_failed + ins.failed)
    )
    conn.execute(
        update(_A)
        .where(_A.c.id == claim.attempt_id)
        .values(
            items_written=_A.c.items_written + ins.written,
            duplicates=_A.c.duplicates + ins.duplicates,
        )
    )
    count_duplicates(conn, claim.job_id, ins.duplicates, ins.reused)
    return ins.written, ins.duplicates


def count_duplicates(conn: Any, job_id: str, dups: int, reused: int = 0) -> None:
    """Add to the job's counters of duplicate executions and of reused items."""
    values: dict[str, Any] = {}
    if dups:
        values["duplicate_executions"] = _J.c.duplicate_executions + dups
    if reused:
        values["reused"] = _J.c.reused + reused
    if values:
        conn.execute(update(_J).where(_J.c.id == job_id).values(**values))


#: The result columns a result line is built from (`ResultLine.from_stored`).
LINE_COLUMNS = (
    "status",
    "output",
    "outputs",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "error_code",
    "error_message",
    "truncated",
    "raw_output",
    "raw_outputs",
    "parsed",
    "incomplete",
    "logprobs",
    "choice_scores",
    "reused_from",
)


@dataclass(frozen=True)
class StoredResult:
    """A result line with what only some formats show (OpenAI lines): when it was
    written, why each output ended and each output's log-probabilities."""

    line: ResultLine
    created_at: datetime | None
    finish_reasons: list[str] | None
    logprobs: list[Any] | None = None


def iter_results(
    store: Store, job_id: str, *, include_pending: bool = False, batch: int = 5000
) -> Iterator[ResultLine]:
    """Stream a job's result lines in input order with bounded memory (keyset
    pagination, so a 10M-item job never sits in one cursor or in memory). With
    `include_pending`, items without a result yet are reported `pending`."""
    for stored in iter_stored(store, job_id, include_pending=include_pending, batch=batch):
        yield stored.line


def iter_stored(
    store: Store, job_id: str, *, include_pending: bool = False, batch: int = 5000
) -> Iterator[StoredResult]:
    """`iter_results`, with each line's write time and per-output finish reasons."""
    columns = [
        Item.idx,
        Item.custom_id,
        *(getattr(Result, c) for c in LINE_COLUMNS),
        Result.created_at,
        Result.finish_reasons,
    ]
    last = -1
    while True:
        with store.read() as s:
            q = (
                select(*columns)
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
            values = r._mapping
            line = ResultLine.from_stored(
                index=r.idx, custom_id=r.custom_id, **{c: values[c] for c in LINE_COLUMNS}
            )
            yield StoredResult(line, as_utc(r.created_at), r.finish_reasons, values["logprobs"])
        last = rows[-1].idx
