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


#: PostgreSQL: one INSERT over arrays, one per column. Its text never changes with the
#: number of rows, so the driver parses it once; a multi-row VALUES statement is a new,
#: long query text for every batch size, and parsing it cost more than the insert.
_PG_COLUMNS = (
    ("idx", "int"),
    ("status", "text"),
    ("output", "text"),
    ("outputs", "text"),
    ("finish_reason", "text"),
    ("prompt_tokens", "int"),
    ("completion_tokens", "int"),
    ("error_code", "text"),
    ("error_message", "text"),
    ("truncated", "bool"),
    ("latency_ms", "float8"),
)
_PG_INSERT = text(
    "INSERT INTO results (job_id, task_id, attempt, worker, created_at, "
    + ", ".join(name for name, _ in _PG_COLUMNS)
    + ") SELECT :job_id, :task_id, :attempt, :worker, :created_at, "
    + ", ".join(f"u.{name}::json" if name == "outputs" else f"u.{name}" for name, _ in _PG_COLUMNS)
    + " FROM unnest("
    + ", ".join(f"CAST(:{name} AS {typ}[])" for name, typ in _PG_COLUMNS)
    + ") AS u("
    + ", ".join(name for name, _ in _PG_COLUMNS)
    + ") ON CONFLICT (job_id, idx) DO NOTHING RETURNING idx, status"
)


_SQLITE_COLUMNS = (
    "job_id",
    "idx",
    "status",
    "output",
    "outputs",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "error_code",
    "error_message",
    "truncated",
    "task_id",
    "attempt",
    "worker",
    "latency_ms",
    "created_at",
)
#: Rows per INSERT statement (16 parameters each; SQLite allows 32766 per statement).
_SQLITE_ROWS = 500


def _sqlite_insert(conn: Any, rows: list[dict[str, Any]], now: Any) -> list[Any]:
    """SQLite: multi-row INSERT ... RETURNING through the driver directly. The values
    are plain Python ones already (the JSON column encoded here, the timestamp through
    the column type once); going through the ORM's per-row parameter processing cost
    more than SQLite's own work."""
    created = _R.c.created_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    stamp = created(now) if created is not None else now
    head = f"INSERT INTO results ({', '.join(_SQLITE_COLUMNS)}) VALUES "
    tail = " ON CONFLICT (job_id, idx) DO NOTHING RETURNING idx, status"
    one = "(" + ", ".join("?" * len(_SQLITE_COLUMNS)) + ")"
    out: list[Any] = []
    for start in range(0, len(rows), _SQLITE_ROWS):
        part = rows[start : start + _SQLITE_ROWS]
        flat: list[Any] = []
        for r in part:
            outputs = r["outputs"]
            flat += (
                r["job_id"],
                r["idx"],
                r["status"],
                r["output"],
                json.dumps(outputs, ensure_ascii=False) if outputs is not None else None,
                r["finish_reason"],
                r["prompt_tokens"],
                r["completion_tokens"],
                r["error_code"],
                r["error_message"],
                r["truncated"],
                r["task_id"],
                r["attempt"],
                r["worker"],
                r["latency_ms"],
                stamp,
            )
        sql = head + ", ".join([one] * len(part)) + tail
        out += conn.exec_driver_sql(sql, tuple(flat)).all()
    return out


def _pg_columns(rows: list[dict[str, Any]], now: Any) -> dict[str, Any]:
    first = rows[0]
    params: dict[str, Any] = {
        "job_id": first["job_id"],
        "task_id": first["task_id"],
        "attempt": first["attempt"],
        "worker": first["worker"],
        "created_at": now,
    }
    for name, _ in _PG_COLUMNS:
        if name == "outputs":
            params[name] = [
                json.dumps(r[name], ensure_ascii=False) if r[name] is not None else None
                for r in rows
            ]
        else:
            params[name] = [r[name] for r in rows]
    return params


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
    now = utcnow()
    job_id, task_id, attempt, worker = claim.job_id, claim.task_id, claim.attempt, claim.worker
    rows = [
        {
            "job_id": job_id,
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
            "task_id": task_id,
            "attempt": attempt,
            "worker": worker,
            "latency_ms": r.latency_ms,
            "created_at": now,
        }
        for r in results
    ]
    conn = s.connection()
    if dialect == "postgresql":
        inserted = conn.execute(_PG_INSERT, _pg_columns(rows, now)).all()
    else:
        inserted = _sqlite_insert(conn, rows, now)
    ok = sum(1 for row in inserted if row.status == ResultStatus.SUCCEEDED.value)
    bad = len(inserted) - ok
    dups = len(rows) - len(inserted)
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
