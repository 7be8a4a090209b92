"""The `genqueue` command line: the Typer app, the options every command shares, and
`main`, which turns any error genqueue raises into one line on stderr.

The commands live in job_commands.py (run, submit and the job views) and
service_commands.py (the long-running roles: worker, scheduler).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from genqueue.errors import GenqueueError
from genqueue.settings import Settings

if TYPE_CHECKING:
    from genqueue.client import Client

app = typer.Typer(
    name="genqueue",
    no_args_is_help=True,
    add_completion=False,
    help="A distributed job queue for batch text generation with pretrained language models.",
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DbOpt = Annotated[
    str | None, typer.Option("--database-url", envvar="GENQUEUE_DATABASE_URL", help="SQL store URL")
]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker-url", envvar="GENQUEUE_BROKER_URL", help="Redis broker URL")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def settings(database_url: str | None = None, broker_url: str | None = None) -> Settings:
    """The environment's settings, with the URLs given as flags."""
    s = Settings.from_env()
    return s.model_copy(
        update={
            "database_url": database_url or s.database_url,
            "broker_url": broker_url or s.broker_url,
        }
    )


def client(database_url: str | None, broker_url: str | None, *, dispatch: bool = True) -> Client:
    from genqueue.client import Client

    return Client(settings=settings(database_url, broker_url), dispatch=dispatch)


def summary(st: dict[str, Any], elapsed: float | None = None) -> str:
    """`job … completed: 9 succeeded, 1 failed of 10 in 2.0s (5.0 items/s)`."""
    c = st["counts"]
    parts = [
        f"{'batch' if 'batch_id' in st and 'jobs' in st else 'job'} "
        f"{(st.get('jobs') and st['batch_id']) or st['job_id']} {st['state']}: "
        f"{c['succeeded']} succeeded",
        f"{c['failed']} failed",
    ]
    if c["cancelled"]:
        parts.append(f"{c['cancelled']} cancelled")
    if c["expired"]:
        parts.append(f"{c['expired']} expired")
    text = ", ".join(parts) + f" of {c['total']}"
    if elapsed:
        text += f" in {elapsed:.1f}s ({c['total'] / elapsed:.1f} items/s)"
    return text


def open_input(path: str) -> Any:
    """A path, or stdin's bytes for `-`."""
    return sys.stdin.buffer if path == "-" else path


def default_output(input_path: str) -> str:
    """Results next to the input: `reviews.jsonl` → `reviews.results.jsonl`."""
    if input_path == "-":
        return "results.jsonl"
    p = Path(input_path)
    stem = p.name.split(".")[0] or "input"
    return str(p.with_name(f"{stem}.results.jsonl"))


#: Anywhere on the command line (or GENQUEUE_DEBUG=1): show the traceback of an
#: unexpected error instead of one line.
DEBUG_FLAG = "--debug"


def main() -> None:
    """Run the CLI. genqueue's own errors (bad input, a bad option) print one line and
    exit 2; anything unexpected prints one line too, and exits 1 (the traceback with
    --debug). A user never gets a traceback for bad input."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    debug = DEBUG_FLAG in sys.argv[1:] or os.environ.get("GENQUEUE_DEBUG", "") not in ("", "0")
    if DEBUG_FLAG in sys.argv[1:]:
        sys.argv.remove(DEBUG_FLAG)
    try:
        app()
    except GenqueueError as exc:
        if debug:
            traceback.print_exc()
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]", highlight=False)
        sys.exit(130)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        detail = str(exc).splitlines()[0][:500] if str(exc) else ""
        err.print(
            f"[red]error:[/] unexpected {type(exc).__name__}"
            + (f": {escape(detail)}" if detail else "")
            + ("" if debug else f" (run again with {DEBUG_FLAG} for the traceback)"),
            highlight=False,
            markup=True,
        )
        sys.exit(1)
    finally:
        # What the command loaded (SQLAlchemy, Celery, redis, rich) is freed with the
        # process: moved out of the collector's sight, Python's teardown skips a sweep
        # of it that took a quarter of a second after every command.
        gc.freeze()
