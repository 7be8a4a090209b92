"""Commands for the HTTP API: `genqueue api` (the server), `genqueue serve` (API,
reconciler and workers in one command), and the operator's `keys` and `models`.

No `from __future__ import annotations` in command modules: Typer reads the options
from the real annotation objects of each command.
"""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from genqueue.cli.app import (
    BrokerOpt,
    DbOpt,
    JsonOpt,
    StateOpt,
    app,
    database_url_for,
    err,
    out,
    settings,
)
from genqueue.cli.errors import CliError, OptionError
from genqueue.settings import Settings

HostOpt = Annotated[str, typer.Option(help="Address to listen on")]
PortOpt = Annotated[int, typer.Option(help="Port to listen on")]

keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")
models_app = typer.Typer(
    no_args_is_help=True, help="Models offered by name through the API: add, list, remove."
)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")


def _store(database_url: str | None, state_dir: Path | None = None) -> Any:
    """The database the server uses: --state-dir's (as `serve --state-dir`), else
    GENQUEUE_DATABASE_URL, else the embedded one."""
    from genqueue.storage.db import open_store

    return open_store(database_url_for(database_url, state_dir))


def check_exposure(store: Any, host: str) -> None:
    """Refuse to serve a non-loopback address when no API key exists (anyone reaching
    it could submit and read everything)."""
    from genqueue.security import is_loopback
    from genqueue.storage.tenants import any_key

    if not is_loopback(host) and not any_key(store):
        raise CliError(
            f"refusing to listen on {host}: no API key exists, so anyone who can reach it "
            "could use it. Create one first (`genqueue keys create --tenant NAME`), or "
            "listen on 127.0.0.1"
        )


def serve_http(s: Settings, host: str, port: int, **app_kwargs: Any) -> None:
    import uvicorn

    from genqueue.api import create_app

    application = create_app(s, **app_kwargs)
    err.print(f"genqueue API on http://{host}:{port} (docs at /docs, Ctrl-C to stop)")
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)


@app.command()
def api(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    database_url: DbOpt = None,
    broker_url: BrokerOpt = None,
) -> None:
    """Run the HTTP API (native jobs API and OpenAI-compatible Files + Batches)."""
    from genqueue.cli.embedded import default_database_url
    from genqueue.security import check_settings

    s = settings(database_url, broker_url)
    s = s.model_copy(update={"database_url": s.database_url or default_database_url()})
    check_settings(s, "API")
    if not s.broker_url:
        err.print(
            "[yellow]no broker (GENQUEUE_BROKER_URL): jobs are stored and sent by a "
            "`genqueue scheduler` running on the same database[/]"
        )
    store = _store(s.database_url)
    check_exposure(store, host)
    serve_http(s, host, port, store=store)


@app.command()
def serve(
    model: Annotated[
        list[str],
        typer.Option(
            "--model", "-m", help="A model to serve (an offered name, or a model reference)"
        ),
    ],
    workers: Annotated[int, typer.Option(help="Worker processes per model")] = 1,
    engine: Annotated[
        str | None, typer.Option(help="Engine for models offered without one (default hf)")
    ] = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    state_dir: Annotated[
        Path | None, typer.Option(help="Where the embedded database and Redis live")
    ] = None,
    database_url: DbOpt = None,
    broker_url: BrokerOpt = None,
) -> None:
    """API + reconciler + workers for the named models, in one command (embedded SQLite
    and Redis unless URLs are given): the single-box way to offer the API."""
    from genqueue.cli.embedded import EmbeddedStack, default_state_dir
    from genqueue.storage import catalog
    from genqueue.worker.supervisor import WorkerSpec
    from genqueue.workeropts import WorkerOptions

    state = state_dir or default_state_dir()
    s = settings(database_url, None)
    stack = EmbeddedStack.start(state, s, broker_url=broker_url)
    try:
        check_exposure(stack.store, host)
        offered = {m.name: m for m in catalog.offered_models(stack.store)}
        for i, name in enumerate(dict.fromkeys(model)):
            found = offered.get(name) or catalog.offer_model(stack.store, name, name, engine=engine)
            stack.start_workers(
                WorkerSpec(
                    options=WorkerOptions(
                        model=found.model,
                        revision=found.revision,
                        engine=found.engine or engine or "hf",
                    ),
                    processes=max(1, workers),
                    log_dir=str(state / "logs" / f"serve-{i}"),
                )
            )
            err.print(f"serving {name} ({found.model}) with {max(1, workers)} worker(s)")
        stack.start_reconciler()
        serve_http(stack.settings, host, port, store=stack.store, dispatcher=stack.dispatcher)
    finally:
        stack.close()


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for")],
    admin: Annotated[bool, typer.Option(help="The key sees every tenant")] = False,
    name: Annotated[str | None, typer.Option(help="A label for the key")] = None,
    database_url: DbOpt = None,
    state_dir: StateOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from genqueue.storage.tenants import create_key

    row, secret = create_key(_store(database_url, state_dir), tenant, admin=admin, name=name)
    if json_out:
        out.print_json(data={"id": row.id, "tenant": row.tenant, "admin": admin, "key": secret})
        return
    out.print(secret)
    err.print(f"key {row.id} for tenant {tenant}{' (admin)' if admin else ''}: store it now")


@keys_app.command("list")
def keys_list(
    database_url: DbOpt = None, state_dir: StateOpt = None, json_out: JsonOpt = False
) -> None:
    """List API keys (their ids, never the keys)."""
    from genqueue.storage.tenants import list_keys

    rows = list_keys(_store(database_url, state_dir))
    data = [
        {
            "id": r.id,
            "tenant": r.tenant,
            "name": r.name,
            "admin": r.admin,
            "created_at": r.created_at.isoformat(),
            "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
        }
        for r in rows
    ]
    if json_out:
        out.print_json(data=data)
        return
    table = Table("id", "tenant", "name", "admin", "created", "revoked")
    for d in data:
        table.add_row(
            d["id"],
            d["tenant"],
            d["name"] or "",
            "yes" if d["admin"] else "",
            d["created_at"][:19],
            (d["revoked_at"] or "")[:19],
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, database_url: DbOpt = None, state_dir: StateOpt = None) -> None:
    """Revoke an API key: requests with it get 401 from now on."""
    from genqueue.storage.tenants import revoke_key

    changed = revoke_key(_store(database_url, state_dir), key_id)
    err.print(f"key {key_id} " + ("revoked" if changed else "was revoked already"))


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="The public name lines use (body.model)")],
    model: Annotated[str, typer.Option("--model", "-m", help="Hub id, directory or tiny model")],
    revision: Annotated[str | None, typer.Option(help="Model revision")] = None,
    engine: Annotated[str | None, typer.Option(help="Engine `serve` starts it with")] = None,
    database_url: DbOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """Offer a model under a public name (replaces what the name meant before)."""
    from genqueue.storage import catalog

    if not name.strip() or len(name) > 200:
        raise OptionError("NAME: give 1-200 characters")
    catalog.offer_model(
        _store(database_url, state_dir), name, model, revision=revision, engine=engine
    )
    err.print(f"offering {name} = {model}" + (f"@{revision}" if revision else ""))


@models_app.command("list")
def models_list(
    database_url: DbOpt = None, state_dir: StateOpt = None, json_out: JsonOpt = False
) -> None:
    """List the offered models and their live workers."""
    from genqueue.protocol import queue_for, resolve_model_ref
    from genqueue.storage import catalog, workers

    store = _store(database_url, state_dir)
    live = workers.live_by_queue(store, within_seconds=Settings().lease_seconds)
    data = [
        {
            "name": m.name,
            "model": m.model,
            "revision": m.revision,
            "engine": m.engine,
            "workers": live.get(queue_for(resolve_model_ref(m.model), m.revision), 0),
        }
        for m in catalog.offered_models(store)
    ]
    if json_out:
        out.print_json(data=data)
        return
    table = Table("name", "model", "revision", "engine", "workers")
    for d in data:
        table.add_row(
            d["name"], d["model"], d["revision"] or "", d["engine"] or "", str(d["workers"])
        )
    out.print(table)


@models_app.command("remove")
def models_remove(name: str, database_url: DbOpt = None, state_dir: StateOpt = None) -> None:
    """Stop offering a model (jobs already submitted go on)."""
    from genqueue.storage import catalog

    catalog.withdraw_model(_store(database_url, state_dir), name)
    err.print(f"{name} is no longer offered")
