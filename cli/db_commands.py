"""`genqueue db`: the schema of the SQL store (upgrade it, show where it is).

Submitters, the reconciler and the embedded run bring a database to the newest schema
when they open it; workers never do (they refuse a schema that is not theirs), so an
upgrade is one explicit step: `genqueue db upgrade`, then restart workers on the new
version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from genqueue.cli.app import DbOpt, JsonOpt, app, err, out, settings
from genqueue.cli.errors import CliError

if TYPE_CHECKING:
    from genqueue.storage.db import Store

db_app = typer.Typer(help="The SQL store's schema: upgrade it, show its revision.")
app.add_typer(db_app, name="db")


def _store(database_url: str | None) -> Store:
    from genqueue.storage.db import open_store

    url = settings(database_url, None).database_url
    if not url:
        raise CliError("give the database: GENQUEUE_DATABASE_URL or --database-url")
    return open_store(url, migrate=False)


@db_app.command()
def upgrade(database_url: DbOpt = None) -> None:
    """Bring the database to this genqueue's schema (safe to run from many hosts at once)."""
    from genqueue.storage.migrate import upgrade as run_upgrade

    store = _store(database_url)
    try:
        before, after = run_upgrade(store)
    finally:
        store.dispose()
    if before == after:
        err.print(f"{store.safe_url}: already at schema {after}")
    else:
        err.print(f"{store.safe_url}: upgraded from {before or 'empty'} to {after}")


@db_app.command()
def current(database_url: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Show the database's schema revision and this genqueue's; exit 1 when they differ."""
    from genqueue.storage.migrate import current_revision, head_revision, revisions

    store = _store(database_url)
    try:
        now, head = current_revision(store), head_revision()
    finally:
        store.dispose()
    if now == head:
        state = "current"
    elif now is not None and now not in revisions():
        state = "newer"
    else:
        state = "behind"
    if json_out:
        out.print_json(
            data={"database": store.safe_url, "revision": now, "head": head, "state": state}
        )
    else:
        out.print(f"{store.safe_url}: schema {now or 'none'}; this genqueue: {head} ({state})")
    if state != "current":
        raise typer.Exit(1)
