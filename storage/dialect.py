"""Where SQLite and PostgreSQL differ, in one place.

Every other storage module writes portable SQLAlchemy and calls these functions for the
rest: connection setup, row locks, bulk inserts through the driver, and statistics.
Functions read the dialect from the connection or session they are given (`backend`).

**Lock order (PostgreSQL).** Writers lock rows in one order, so two transactions can
never each hold what the other waits for:

1. task rows first, in ascending id: a claim locks its task; a completion its task and
   the held next one (`lock_tasks`); recovery and a job's removal lock a job's tasks in
   id order;
2. then the job row, with `lock_job` (FOR NO KEY UPDATE: it does not wait for the KEY
   SHARE locks that inserting items and results takes through their foreign keys, so
   two workers finishing tasks of one job do not deadlock on them).

3. then, when a job of an OpenAI batch ends, its batch row (FOR NO KEY UPDATE, in
   `webhooks.job_ended`): the jobs of one batch ending at once queue there, so exactly
   one sees the whole batch ended and writes its webhook event.

Nothing locks a job row and then one of its tasks, nor a batch row and then a job.
Cancelling a job updates its tasks before the job row for the same reason. SQLite has
a single writer at a time (every write transaction starts with BEGIN IMMEDIATE and
waits for the lock), so row locks are no-ops there and the order holds trivially.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    Integer,
    Select,
    any_,
    bindparam,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from genqueue.storage.models import Item, Job, Result, Task

POSTGRES = "postgresql"
SQLITE = "sqlite"
_Q = TypeVar("_Q", bound=Select[Any])
_T, _J, _R, _I = Task.__table__, Job.__table__, Result.__table__, Item.__table__


def backend(bind: Session | Connection | Engine) -> str:
    """ "sqlite" or "postgresql", for a session, a connection or an engine."""
    if isinstance(bind, Session):
        return bind.get_bind().dialect.name
    return bind.dialect.name


# -- connections ---------------------------------------------------------------------


def engine_options(name: str) -> dict[str, Any]:
    """`create_engine` arguments for a backend."""
    if name == SQLITE:
        return {"connect_args": {"timeout": 60, "check_same_thread": False}}
    # psycopg prepares a statement after a few runs, and PostgreSQL may then settle on
    # one generic plan chosen while the tables were small (a fresh database: a scan of
    # `results` per claim, kept as the job grew to 100k results). Plan each run for
    # the tables as they are now.
    return {
        "pool_pre_ping": True,
        "pool_size": 5,
        "max_overflow": 5,
        "connect_args": {
            "options": "-c plan_cache_mode=force_custom_plan",
            # A connection across a network that went away fails within seconds (TCP
            # keepalive, and unacknowledged writes give up after 15 s) instead of hanging,
            # so the pool reconnects once the network is back.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 15000,
        },
    }


def configure_engine(engine: Engine) -> None:
    """SQLite: WAL, and transactions that take the write lock up front (see below)."""
    if engine.dialect.name == SQLITE:
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The driver must not open transactions itself: we issue BEGIN IMMEDIATE below, so
    # a writer takes the lock up front and waits (busy_timeout) instead of failing with
    # SQLITE_BUSY when it upgrades a read transaction under concurrent writers.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # Readers (status polls, exports) start deferred: under WAL they never wait for, or
    # block, a writer. Everything else takes the write lock up front.
    if conn.get_execution_options().get("genqueue_read"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def migration_lock(conn: Connection) -> None:
    """Serialise schema upgrades of many starting processes (SQLite: the write lock)."""
    if backend(conn) == POSTGRES:
        conn.execute(text("SELECT pg_advisory_xact_lock(774411)"))


# -- row locks (see the lock order above) --------------------------------------------


def for_update(query: _Q, bind: Session | Connection, *, of: Any = None) -> _Q:
    """The query locking the rows it reads (FOR NO KEY UPDATE [OF of]) on PostgreSQL."""
    if backend(bind) != POSTGRES:
        return query
    return query.with_for_update(of=of, key_share=True)


def for_update_skip_locked(query: _Q, bind: Session | Connection) -> _Q:
    """Lock what is free and leave out rows another transaction holds (PostgreSQL)."""
    if backend(bind) != POSTGRES:
        return query
    return query.with_for_update(skip_locked=True)


def lock_tasks(bind: Session | Connection, task_ids: Sequence[int]) -> None:
    """Lock task rows in ascending id (rule 1 of the lock order)."""
    if backend(bind) != POSTGRES or not task_ids:
        return
    q = select(_T.c.id).where(_T.c.id.in_(sorted(set(task_ids)))).order_by(_T.c.id)
    _conn(bind).execute(q.with_for_update(key_share=True)).all()


def lock_job_tasks(bind: Session | Connection, job_id: str) -> None:
    """Lock every task of a job, in ascending id (rule 1)."""
    if backend(bind) != POSTGRES:
        return
    q = select(_T.c.id).where(_T.c.job_id == job_id).order_by(_T.c.id)
    _conn(bind).execute(q.with_for_update()).all()


def lock_job(bind: Session | Connection, job_id: str) -> None:
    """Lock a job row after its tasks (rule 2). Two workers finishing a job's last two
    tasks at once would each still see the other's task open (read committed) and
    neither would finalise the job; queueing here makes the second see the first."""
    if backend(bind) != POSTGRES:
        return
    q = select(_J.c.id).where(_J.c.id == job_id).with_for_update(key_share=True)
    _conn(bind).execute(q).all()


# -- bulk writes through the driver ----------------------------------------------------

ITEM_COLUMNS = ("job_id", "idx", "line", "custom_id", "prompt", "params", "task_id", "messages")


def insert_items(bind: Session | Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert item rows (values in ITEM_COLUMNS order, `params` a dict and `messages` a
    list, or None). SQLite: straight to the driver's executemany (JSON encoded here), as the ORM's
    per-row processing cost more than SQLite's own work; PostgreSQL: SQLAlchemy's
    batched multi-row INSERT."""
    conn = _conn(bind)
    if backend(conn) == SQLITE:
        sql = (
            f"INSERT INTO items ({', '.join(ITEM_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in ITEM_COLUMNS)})"
        )
        conn.exec_driver_sql(
            sql,
            [(*r[:5], _json(r[5]), r[6], _json(r[7])) for r in rows],
        )
    else:
        conn.execute(insert(_I), [dict(zip(ITEM_COLUMNS, r, strict=True)) for r in rows])


def _json(value: Any) -> str | None:
    return json.dumps(value, ensure_ascii=False) if value is not None else None


#: A result row's own values, in this order; the shared columns are the same for every
#: row of a write and are bound once.
RESULT_COLUMNS = (
    ("idx", "int"),
    ("status", "text"),
    ("output", "text"),
    ("outputs", "text"),  # JSON text (or NULL), cast to json by PostgreSQL
    ("finish_reason", "text"),
    ("finish_reasons", "text"),  # JSON text (or NULL), cast to json by PostgreSQL
    ("prompt_tokens", "int"),
    ("completion_tokens", "int"),
    ("error_code", "text"),
    ("error_message", "text"),
    ("truncated", "bool"),
    ("latency_ms", "float8"),
    ("raw_output", "text"),
    ("raw_outputs", "text"),  # JSON text (or NULL), like outputs
    ("parsed", "text"),
    ("incomplete", "bool"),
    ("logprobs", "text"),
    ("choice_scores", "text"),
    ("reuse_key", "text"),
    ("reused_from", "text"),
)
RESULT_SHARED = ("job_id", "task_id", "attempt", "worker", "created_at")
_JSON_COLUMNS = ("outputs", "finish_reasons", "raw_outputs", "parsed", "logprobs", "choice_scores")
_RESULT_HEAD = (
    f"INSERT INTO results ({', '.join(RESULT_SHARED)}, "
    + ", ".join(name for name, _ in RESULT_COLUMNS)
    + ") "
)
_ON_CONFLICT = " ON CONFLICT (job_id, idx) DO NOTHING RETURNING idx, status, reused_from"
#: PostgreSQL: one INSERT over arrays, one per column. Its text never changes with the
#: number of rows, so the driver parses it once; a multi-row VALUES statement is a new,
#: long query text for every batch size, and parsing it cost more than the insert.
_PG_RESULTS = text(
    _RESULT_HEAD
    + "SELECT "
    + ", ".join(f":{name}" for name in RESULT_SHARED)
    + ", "
    + ", ".join(f"u.{n}::json" if n in _JSON_COLUMNS else f"u.{n}" for n, _ in RESULT_COLUMNS)
    + " FROM unnest("
    + ", ".join(f"CAST(:{name} AS {typ}[])" for name, typ in RESULT_COLUMNS)
    + ") AS u("
    + ", ".join(name for name, _ in RESULT_COLUMNS)
    + ")"
    + _ON_CONFLICT
)
#: SQLite: rows per multi-row INSERT (23 parameters each; it allows 32766 per statement).
_SQLITE_ROWS = 500


def insert_results(
    bind: Session | Connection, shared: tuple[Any, ...], rows: list[tuple[Any, ...]]
) -> list[Any]:
    """Insert result rows (first writer wins: a row whose item has one already is
    skipped); returns (idx, status, reused_from) of the rows inserted."""
    conn = _conn(bind)
    if backend(conn) == POSTGRES:
        params = dict(zip(RESULT_SHARED, shared, strict=True))
        for i, (name, _) in enumerate(RESULT_COLUMNS):
            params[name] = [row[i] for row in rows]
        return list(conn.execute(_PG_RESULTS, params).all())
    created = _R.c.created_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    if created is not None:  # SQLite stores the timestamp as the column type writes it
        shared = (*shared[:-1], created(shared[-1]))
    one = "(" + ", ".join("?" * (len(RESULT_SHARED) + len(RESULT_COLUMNS))) + ")"
    out: list[Any] = []
    for start in range(0, len(rows), _SQLITE_ROWS):
        part = rows[start : start + _SQLITE_ROWS]
        flat = [v for row in part for v in (*shared, *row)]
        sql = _RESULT_HEAD + "VALUES " + ", ".join([one] * len(part)) + _ON_CONFLICT
        out += conn.exec_driver_sql(sql, tuple(flat)).all()
    return out


# -- reads ------------------------------------------------------------------------------


def with_results(bind: Session | Connection, job_id: str, idxs: list[int]) -> set[int]:
    """Which of these items of a job have a result. PostgreSQL: primary-key probes with
    one array parameter; it would plan an anti-join with `results` by its statistics,
    and while they lag behind a growing job it picked a scan of every result per claim
    (25 ms each at 100k items). SQLite answers NOT EXISTS with a probe per item, so the
    caller may use the anti-join there (see `prefers_anti_join`)."""
    if not idxs:
        return set()
    if backend(bind) == POSTGRES:
        cond = _R.c.idx == any_(bindparam("idxs", idxs, type_=postgresql.ARRAY(Integer)))
    else:
        cond = _R.c.idx.in_(idxs)
    return set(_conn(bind).scalars(select(_R.c.idx).where(_R.c.job_id == job_id, cond)))


def prefers_anti_join(bind: Session | Connection) -> bool:
    """Whether NOT EXISTS against results is planned well (SQLite) or must be avoided."""
    return backend(bind) != POSTGRES


def epoch_seconds(bind: Session | Connection, column: Any) -> Any:
    """A timestamp column as seconds since 1970 (a float), in SQL: to bucket rows by time
    without reading them (SQLite stores text, PostgreSQL a timestamp)."""
    if backend(bind) == SQLITE:
        return (func.julianday(column) - 2440587.5) * 86400.0
    return func.extract("epoch", column)


def analyze(bind: Session | Connection, tables: Sequence[str]) -> None:
    """PostgreSQL: fresh statistics after a large load, so claims use the task index
    from the first task on (autovacuum would catch up only later)."""
    if backend(bind) == POSTGRES:
        for table in tables:
            _conn(bind).execute(text(f"ANALYZE {table}"))


def insert_new(bind: Session | Connection, table: Any) -> Any:
    """An INSERT that skips rows whose primary key exists already (ON CONFLICT DO
    NOTHING, which SQLite and PostgreSQL both speak): for rows that several processes
    may write at once, where the first writer wins."""
    if backend(bind) == POSTGRES:
        return postgresql.insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table).on_conflict_do_nothing()


def _conn(bind: Session | Connection) -> Connection:
    return bind.connection() if isinstance(bind, Session) else bind
