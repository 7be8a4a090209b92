"""Schema migrations with Alembic, run programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from genqueue.storage.dialect import migration_lock
from genqueue.storage.errors import SchemaMismatch

if TYPE_CHECKING:
    from genqueue.storage.db import Store

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(store: Store) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", store.url.replace("%", "%%"))
    cfg.attributes["store"] = store
    return cfg


def head_revision() -> str:
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    assert head is not None
    return head


def revisions() -> list[str]:
    """Every schema revision this genqueue knows, oldest first."""
    script = ScriptDirectory(str(MIGRATIONS))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def current_revision(store: Store) -> str | None:
    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(store: Store) -> None:
    """Refuse a database whose schema is not exactly this genqueue's (workers check this
    at start instead of migrating: a worker never changes the schema under others)."""
    current, head = current_revision(store), head_revision()
    if current == head:
        return
    _refuse_newer(store, current)
    where = "has no genqueue schema yet" if current is None else f"is at schema {current}"
    raise SchemaMismatch(
        f"the database {store.safe_url} {where}; this genqueue needs {head}. "
        "Run `genqueue db upgrade` (with this version) first"
    )


def _refuse_newer(store: Store, current: str | None) -> None:
    if current is not None and current not in revisions():
        raise SchemaMismatch(
            f"the database {store.safe_url} is at schema {current}, newer than this "
            f"genqueue knows (its newest is {head_revision()}); upgrade genqueue here"
        )


def upgrade(store: Store, target: str = "head") -> tuple[str | None, str | None]:
    """Upgrade to `target` (the newest by default); returns (before, after). Many
    processes may start at once: PostgreSQL serialises them with an advisory lock,
    SQLite with its write lock (BEGIN IMMEDIATE). A newer schema is refused."""
    before = current_revision(store)
    if before == (head_revision() if target == "head" else target):
        return before, before
    _refuse_newer(store, before)
    cfg = alembic_config(store)
    with store.engine.begin() as conn:
        migration_lock(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, target)
    return before, current_revision(store)
