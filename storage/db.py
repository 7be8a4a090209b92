"""Connecting to the SQL store: SQLite (default, WAL) or PostgreSQL (psycopg 3) by URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from genqueue.storage.errors import StorageError


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything genqueue stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` (mapped to psycopg 3) and plain paths."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


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


class Store:
    """A database handle: the engine, a session factory, and the dialect's name."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
        elif self.dialect == "postgresql":
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=5)
            # psycopg prepares a statement after a few runs, and PostgreSQL may then
            # settle on one generic plan chosen while the tables were small (a fresh
            # database: a scan of `results` per claim, kept as the job grew to 100k
            # results). Plan each run for the tables as they are now.
            kwargs["connect_args"] = {"options": "-c plan_cache_mode=force_custom_plan"}
        else:
            raise StorageError(
                f"unsupported database URL {url!r}: use sqlite:///path.db or "
                "postgresql://user@host/db"
            )
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(
            self.engine.execution_options(genqueue_read=True), expire_on_commit=False
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (on SQLite it neither takes nor waits for the write lock)."""
        with self._readers() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    def after_fork(self) -> None:
        """Drop pooled connections inherited from a parent process."""
        self.engine.dispose(close=False)

    def migrate(self) -> None:
        """Bring the schema to the latest Alembic revision (idempotent)."""
        from genqueue.storage.migrate import upgrade

        upgrade(self)


def open_store(url: str | None = None, *, migrate: bool = True) -> Store:
    """The store at `url` (default `GENQUEUE_DATABASE_URL`), migrated to the latest schema."""
    url = url or os.environ.get("GENQUEUE_DATABASE_URL")
    if not url:
        raise StorageError(
            "no database configured: set GENQUEUE_DATABASE_URL (e.g. "
            "postgresql://genqueue@db/genqueue or sqlite:///genqueue.db) or pass --database-url"
        )
    store = Store(url)
    if migrate:
        store.migrate()
    return store
