"""Connecting to the SQL store: SQLite (default, WAL) or PostgreSQL (psycopg 3) by URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from genqueue.storage import dialect
from genqueue.storage.errors import StorageError


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything genqueue stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def aware(value: datetime) -> datetime:
    """`as_utc` for a value that is never None."""
    out = as_utc(value)
    assert out is not None
    return out


#: A plain path is taken for a SQLite file only with one of these endings: anything else
#: without a scheme is a mistyped URL (`postgres@host/db`), not a file to create.
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` (mapped to psycopg 3) and paths of SQLite
    files (SQLITE_SUFFIXES)."""
    if "://" not in url:
        if not url.endswith(SQLITE_SUFFIXES):
            raise StorageError(
                f"{url!r} is not a database URL: use postgresql://user@host:5432/dbname or "
                "sqlite:///path/to/genqueue.db (GENQUEUE_DATABASE_URL, --database-url)"
            )
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


class Store:
    """A database handle: the engine, a session factory, and the dialect's name."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        #: The URL without its password, for messages and logs.
        self.safe_url = parsed.render_as_string(hide_password=True)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in (dialect.SQLITE, dialect.POSTGRES):
            raise StorageError(
                f"unsupported database URL {url!r}: use sqlite:///path.db or "
                "postgresql://user@host/db"
            )
        if self.dialect == dialect.SQLITE and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(
            self.url, echo=echo, **dialect.engine_options(self.dialect)
        )
        dialect.configure_engine(self.engine)
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
