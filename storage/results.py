"""Results: idempotent writes (first writer wins) and ordered streaming reads."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

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
    with store.session() as s:
        if not task_exists(s, store.dialect, claim.task_id):
            return 0, 0  # its job was rejected and removed meanwhile: nothing to keep
        return insert_results(s, store.dialect, claim, results)


def task_exists(s: Session, dialect: str, task_id: int) -> bool:
    """Whether the task still exists, locking its row (PostgreSQL) so that it cannot be
    removed (a rejected submission) before this transaction commits."""
    q = select(_T.c.id).where(_T.c.id == task_id)
    if dialect == "postgresql":
        q = q.with_for_update(key_share=True)
    return s.connection().scalar(q) is not None


_R, _T, _A, _J = (m.__table__ for m in (Result, Task, Attempt, Job))


#: A result row's own values, in this order; job_id, task_id, attempt, worker and
#: created_at are the same for every row of a write and are bound once.
_ROW_COLUMNS = (
    ("idx", "int"),
    ("status", "text"),
    ("output", "text"),
    ("outputs", "text"),  # JSON text (or NULL), cast to json by PostgreSQL
    ("finish_reason", "text"),
    ("prompt_tokens", "int"),
    ("completion_tokens", "int"),
    ("error_code", "text"),
    ("error_message", "text"),
    ("truncated", "bool"),
    ("latency_ms", "float8"),
)
_SHARED_COLUMNS = ("job_id", "task_id", "attempt", "worker", "created_at")
_INSERT_HEAD = (
    f"INSERT INTO results ({', '.join(_SHARED_COLUMNS)}, "
    + ", ".join(name for name, _ in _ROW_COLUMNS)
    + ") "
)
_ON_CONFLICT = " ON CONFLICT (job_id, idx) DO NOTHING RETURNING idx, status"
#: PostgreSQL: one INSERT over arrays, one per column. Its text never changes with the
#: number of rows, so the driver parses it once; a multi-row VALUES statement is a new,
#: long query text for every batch size, and parsing it cost more than the insert.
_PG_INSERT = text(
    _INSERT_HEAD
    + "SELECT "
    + ", ".join(f":{name}" for name in _SHARED_COLUMNS)
    + ", "
    + ", ".join(f"u.{name}::json" if name == "outputs" else f"u.{name}" for name, _ in _ROW_COLUMNS)
    + " FROM unnest("
    + ", ".join(f"CAST(:{name} AS {typ}[])" for name, typ in _ROW_COLUMNS)
    + ") AS u("
    + ", ".join(name for name, _ in _ROW_COLUMNS)
    + ")"
    + _ON_CONFLICT
)
#: SQLite: rows per multi-row INSERT (16 parameters each; it allows 32766 per statement).
_SQLITE_ROWS = 500


def _row_values(r: NewResult) -> tuple[Any, ...]:
    """A result's own values in _ROW_COLUMNS order, ready for the driver."""
    outputs = [clean_text(o) for o in r.outputs] if r.outputs is not None else None
    return (
        r.idx,
        r.status.value,
        clean_text(r.output),
        json.dumps(outputs, ensure_ascii=False) if outputs is not None else None,
        r.finish_reason,
        r.prompt_tokens,
        r.completion_tokens,
        r.error_code,
        clean_text(r.error_message),
        r.truncated,
        r.latency_ms,
    )


def _insert(
    conn: Any, dialect: str, shared: tuple[Any, ...], rows: list[tuple[Any, ...]]
) -> list[Any]:
    """Insert rows (first writer wins); returns (idx, status) of the inserted ones. Values
    go to the driver as they are: the ORM's per-row parameter processing cost more than
    the database's own work."""
    if dialect == "postgresql":
        params = dict(zip(_SHARED_COLUMNS, shared, strict=True))
        for i, (name, _) in enumerate(_ROW_COLUMNS):
            params[name] = [row[i] for row in rows]
        return list(conn.execute(_PG_INSERT, params).all())
    created = _R.c.created_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    if created is not None:  # SQLite stores the timestamp as the column type writes it
        shared = (*shared[:-1], created(shared[-1]))
    one = "(" + ", ".join("?" * (len(_SHARED_COLUMNS) + len(_ROW_COLUMNS))) + ")"
    out: list[Any] = []
    for start in range(0, len(rows), _SQLITE_ROWS):
        part = rows[start : start + _SQLITE_ROWS]
        flat = [v for row in part for v in (*shared, *row)]
        sql = _INSERT_HEAD + "VALUES " + ", ".join([one] * len(part)) + _ON_CONFLICT
        out += conn.exec_driver_sql(sql, tuple(flat)).all()
    return out


@dataclass(frozen=True)
class Inserted:
    written: int  # rows inserted
    duplicates: int  # rows another execution had already written
    succeeded: int  # of the inserted rows
    failed: int


def insert_rows(s: Session, dialect: str, claim: Claim, results: Sequence[NewResult]) -> Inserted:
    """Insert result rows (first writer wins) without touching any counter."""
    if not results:
        return Inserted(0, 0, 0, 0)
    job_id, conn = claim.job_id, s.connection()
    shared = (job_id, claim.task_id, claim.attempt, claim.worker, utcnow())
    inserted = _insert(conn, dialect, shared, [_row_values(r) for r in results])
    ok = sum(1 for row in inserted if row.status == ResultStatus.SUCCEEDED.value)
    bad = len(inserted) - ok
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
    return Inserted(len(inserted), dups, ok, bad)


def insert_results(
    s: Session, dialect: str, claim: Claim, results: Sequence[NewResult]
) -> tuple[int, int]:
    """`write_results` inside the caller's transaction: one multi-row INSERT plus the
    task's and the attempt's counters (plain statements, no ORM objects)."""
    ins = insert_rows(s, dialect, claim, results)
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
    count_duplicates(conn, claim.job_id, ins.duplicates)
    return ins.written, ins.duplicates


def count_duplicates(conn: Any, job_id: str, dups: int) -> None:
    if dups:
        conn.execute(
            update(_J)
            .where(_J.c.id == job_id)
            .values(duplicate_executions=_J.c.duplicate_executions + dups)
        )


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
