"""`genqueue webhooks`: each tenant's default webhook endpoint and signing secret.

No `from __future__ import annotations` in command modules: Typer reads the options
from the real annotation objects of each command.
"""

from typing import Annotated

import typer
from rich.table import Table

from genqueue.cli.app import DbOpt, JsonOpt, StateOpt, app, err, out

webhooks_app = typer.Typer(
    no_args_is_help=True, help="Webhooks: a tenant's default endpoint and signing secret."
)
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("set")
def webhooks_set(
    tenant: Annotated[str, typer.Option(help="The tenant whose events these are")],
    url: Annotated[
        str | None,
        typer.Option(
            help='Default endpoint for the tenant\'s jobs and batches ("" removes it; '
            "omitted: kept as it is)"
        ),
    ] = None,
    rotate: Annotated[bool, typer.Option(help="Issue a new signing secret")] = False,
    database_url: DbOpt = None,
    state_dir: StateOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Set a tenant's default webhook URL. Its signing secret (whsec_...) is printed
    when it is created or rotated, and never again: give it to the receiver."""
    from genqueue.cli.api_commands import _store
    from genqueue.storage.webhooks import set_endpoint

    ep, fresh = set_endpoint(_store(database_url, state_dir), tenant, url=url, rotate=rotate)
    if json_out:
        data = {"tenant": ep.tenant, "url": ep.url, "secret": ep.secret if fresh else None}
        out.print_json(data=data)
        return
    if fresh:
        out.print(ep.secret)
    where = ep.url or "no default URL (jobs give their own webhook_url)"
    secret = "new signing secret above: store it now" if fresh else "signing secret unchanged"
    err.print(f"tenant {ep.tenant}: {where}; {secret}")


@webhooks_app.command("list")
def webhooks_list(
    database_url: DbOpt = None, state_dir: StateOpt = None, json_out: JsonOpt = False
) -> None:
    """List tenants' webhook endpoints (never their secrets)."""
    from genqueue.cli.api_commands import _store
    from genqueue.storage.webhooks import list_endpoints

    data = [
        {"tenant": e.tenant, "url": e.url, "updated_at": e.updated_at.isoformat()}
        for e in list_endpoints(_store(database_url, state_dir))
    ]
    if json_out:
        out.print_json(data=data)
        return
    table = Table("tenant", "url", "updated")
    for d in data:
        table.add_row(d["tenant"], d["url"] or "", d["updated_at"][:19])
    out.print(table)
