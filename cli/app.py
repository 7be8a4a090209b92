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
StateOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Use the database in this state dir (that of `genqueue run --state-dir` or "
        "`genqueue serve --state-dir`) instead of --database-url",
    ),
]


def database_url_for(
    database_url: str | None, state_dir: Path | None, *, must_exist: bool = False
) -> str | None:
    """The database a command works on: --state-dir's, else --database-url (or
    GENQUEUE_DATABASE_URL), else the embedded one in GENQUEUE_HOME (where `genqueue run`
    and `serve` keep theirs), or None when there is none. `must_exist`: a command that
    only reads or changes jobs refuses a SQLite file that is not there, instead of
    creating an empty database at a mistyped path."""
    from genqueue.cli.embedded import default_database_url, default_state_dir
    from genqueue.cli.errors import OptionError

    if state_dir is not None:
        if must_exist and not (state_dir / "genqueue.db").is_file():
            raise OptionError(
                f"--state-dir: {state_dir} holds no genqueue database (genqueue.db); give "
                "the --state-dir of a `genqueue run` or `genqueue serve`"
            )
        return default_database_url(state_dir)
    if database_url:
        path = _sqlite_file(database_url)
        if must_exist and path is not None and not path.is_file():
            raise OptionError(
                f"no database at {path} (--database-url {database_url}); check the path"
            )
        return database_url
    if not must_exist or (default_state_dir() / "genqueue.db").is_file():
        return default_database_url()
    return None


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database, or SQLite in memory)."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    return Path(name) if name and name != ":memory:" and not name.startswith("file:") else None


def settings(database_url: str | None = None, broker_url: str | None = None) -> Settings:
    """The environment's settings, with the URLs given as flags."""
    s = Settings.from_env()
    return s.model_copy(
        update={
            "database_url": database_url or s.database_url,
            "broker_url": broker_url or s.broker_url,
        }
    )


def client(
    database_url: str | None,
    broker_url: str | None,
    *,
    dispatch: bool = True,
    state_dir: Path | None = None,
    existing: bool = True,
) -> Client:
    """A client on the database `database_url_for` picks (`existing`: one that is there
    already; else the URL as given, for `submit`, whose deployment may be new)."""
    from genqueue.client import Client

    url = database_url_for(database_url, state_dir, must_exist=True) if existing else database_url
    return Client(settings=settings(url, broker_url), dispatch=dispatch)


def summary(st: dict[str, Any], elapsed: float | None = None) -> str:
    """`job … completed: 9 succeeded, 1 failed of 10 in 2.0s (5.0 items/s)`: the rate of
    the items that ran (succeeded or failed)."""
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
        # The rate of the items that ran to an end: cancelled and expired ones never ran.
        ran = c["succeeded"] + c["failed"]
        text += f" in {elapsed:.1f}s" + (f" ({ran / elapsed:.1f} items/s)" if ran else "")
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


def _database_unreachable(exc: BaseException) -> bool:
    """A connection to the SQL store failed (refused, unknown database, bad password)."""
    errors = sys.modules.get("sqlalchemy.exc")
    return errors is not None and isinstance(exc, errors.OperationalError | errors.InterfaceError)


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
        if _database_unreachable(exc):
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:500]
            err.print(
                f"[red]error:[/] cannot use the database: {escape(reason)}; check "
                "--database-url / GENQUEUE_DATABASE_URL and that the server is up",
                highlight=False,
            )
            sys.exit(1)
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
