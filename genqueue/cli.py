"""The `genqueue` command line."""

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from genqueue.errors import GenqueueError
from genqueue.jobopts import JobOptions, with_job_options
from genqueue.settings import Settings

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


def _settings(database_url: str | None = None, broker_url: str | None = None) -> Settings:
    s = Settings()
    return s.model_copy(
        update={
            "database_url": database_url or s.database_url,
            "broker_url": broker_url or s.broker_url,
        }
    )


def _client(database_url: str | None, broker_url: str | None, *, dispatch: bool = True) -> Any:
    from genqueue.client import Client

    return Client(settings=_settings(database_url, broker_url), dispatch=dispatch)


def _default_output(input_path: str) -> str:
    if input_path == "-":
        return "results.jsonl"
    p = Path(input_path)
    stem = p.name.split(".")[0] or "input"
    return str(p.with_name(f"{stem}.results.jsonl"))


def _summary(st: dict[str, Any], elapsed: float | None = None) -> str:
    c = st["counts"]
    parts = [
        f"job {st['job_id']} {st['state']}: {c['succeeded']} succeeded",
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


def _open_input(path: str) -> Any:
    return sys.stdin.buffer if path == "-" else path


@app.command()
@with_job_options
def run(
    input: Annotated[str, typer.Argument(help="Input file (.jsonl/.csv/.parquet) or - for stdin")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Results file (.jsonl/.csv/.parquet); default: next to the input"
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Local worker processes (0 = one per GPU, or per 1-2 CPU cores)")
    ] = 0,
    engine: Annotated[str, typer.Option(help="hf | deepspeed | dry-run")] = "hf",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    state_dir: Annotated[
        Path | None, typer.Option(help="Where the embedded database and Redis live")
    ] = None,
    json_out: JsonOpt = False,
    job: JobOptions = None,  # type: ignore[assignment]
) -> None:
    """Run a job end to end on this machine: embedded Redis + SQLite + local workers."""
    from genqueue.embedded import EmbeddedStack
    from genqueue.progress import follow
    from genqueue.protocol import cache_dir
    from genqueue.worker.supervisor import Supervisor, WorkerSpec, visible_gpus

    settings = _settings()
    state = state_dir or cache_dir() / "embedded"
    n = workers or max(
        1,
        len(visible_gpus()) if device != "cpu" and visible_gpus() else min(4, os.cpu_count() or 1),
    )
    target = output or _default_output(input)
    started = time.monotonic()
    stack = EmbeddedStack.start(state, settings)
    try:
        from genqueue.client import Client

        client = Client(settings=stack.settings)
        kwargs = job.submit_kwargs()
        job_id = client.submit(_open_input(input), **kwargs)
        if not json_out:
            err.print(
                f"[bold]job {job_id}[/]: {client.status(job_id)['counts']['total']} items, "
                f"{n} worker process(es), model {kwargs['model']}"
            )
        stack.start_workers(
            WorkerSpec(
                model=kwargs["model"],
                engine=engine,
                revision=kwargs["revision"],
                device=device,
                processes=n,
                trust_remote_code=kwargs["trust_remote_code"],
                log_dir=str(state / "logs"),
            )
        )
        stack.start_reconciler()
        sup: Supervisor = stack.supervisor

        def check() -> None:
            if min(sup.restarts) >= 3 and client.status(job_id)["counts"]["succeeded"] == 0:
                raise GenqueueError(
                    "the worker processes keep exiting before doing any work; the end of "
                    f"{sup.log_path(0)}:\n{sup.log_tail(0)}"
                )

        try:
            final = follow(lambda: client.status(job_id), err, check=check)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted: cancelling the job and writing partial results[/]")
            client.cancel(job_id)
            final = client.status(job_id)
        n_lines = client.export(job_id, target, include_pending=True)
        elapsed = time.monotonic() - started
        if json_out:
            out.print_json(
                data={**final, "results": target, "lines": n_lines, "elapsed_s": round(elapsed, 3)}
            )
        else:
            err.print(_summary(final, elapsed))
            err.print(f"results: [bold]{target}[/] ({n_lines} lines)")
        client.close()
    finally:
        stack.close()
    if final["state"] not in ("completed", "completed_with_errors"):
        raise typer.Exit(1)


@app.command()
@with_job_options
def submit(
    input: Annotated[str, typer.Argument(help="Input file (.jsonl/.csv/.parquet) or - for stdin")],
    wait: Annotated[bool, typer.Option(help="Wait for the job and show progress")] = False,
    database_url: DbOpt = None,
    broker_url: BrokerOpt = None,
    json_out: JsonOpt = False,
    job: JobOptions = None,  # type: ignore[assignment]
) -> None:
    """Submit a job to a deployment (GENQUEUE_DATABASE_URL + GENQUEUE_BROKER_URL); prints its id."""
    client = _client(database_url, broker_url)
    job_id = client.submit(_open_input(input), **job.submit_kwargs())
    if json_out and not wait:
        out.print_json(data={"job_id": job_id})
    elif not wait:
        out.print(job_id)
    if wait:
        from genqueue.progress import follow

        err.print(f"job {job_id} submitted")
        final = follow(lambda: client.status(job_id), err)
        if json_out:
            out.print_json(data=final)
        else:
            err.print(_summary(final))
        if final["state"] not in ("completed", "completed_with_errors"):
            raise typer.Exit(1)


@app.command()
def status(job_id: str, database_url: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Show a job's state and counts."""
    st = _client(database_url, None, dispatch=False).status(job_id)
    if json_out:
        out.print_json(data=st)
        return
    c = st["counts"]
    table = Table(show_header=False, box=None)
    for key in (
        "job_id",
        "state",
        "kind",
        "model",
        "revision",
        "engine",
        "created_at",
        "started_at",
        "finished_at",
        "deadline_at",
    ):
        if st.get(key) is not None:
            table.add_row(key, str(st[key]))
    table.add_row("items", ", ".join(f"{k} {v}" for k, v in c.items()))
    if st["duplicate_executions"]:
        table.add_row("duplicate executions", str(st["duplicate_executions"]))
    out.print(table)


@app.command()
def jobs(
    database_url: DbOpt = None,
    json_out: JsonOpt = False,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state")] = None,
    limit: int = 50,
) -> None:
    """List recent jobs."""
    rows = _client(database_url, None, dispatch=False).jobs(limit=limit, state=state)
    if json_out:
        out.print_json(data=rows)
        return
    table = Table("job", "state", "kind", "model", "done/total", "failed", "created")
    for r in rows:
        c = r["counts"]
        done = c["succeeded"] + c["failed"] + c["cancelled"] + c["expired"]
        table.add_row(
            r["job_id"],
            r["state"],
            r["kind"],
            Path(r["model"]).name,
            f"{done}/{c['total']}",
            str(c["failed"]),
            (r["created_at"] or "")[:19],
        )
    out.print(table)


@app.command()
def results(
    job_id: str,
    output: Annotated[
        str, typer.Option("--output", "-o", help="File (.jsonl/.csv/.parquet) or - for stdout")
    ] = "-",
    fmt: Annotated[str | None, typer.Option("--format", help="jsonl | csv | parquet")] = None,
    include_pending: Annotated[
        bool, typer.Option(help="Also list items without a result yet")
    ] = False,
    database_url: DbOpt = None,
) -> None:
    """Export a job's results (works on a running job: returns what is done)."""
    n = _client(database_url, None, dispatch=False).export(
        job_id, output, format=fmt, include_pending=include_pending
    )
    if output != "-":
        err.print(f"wrote {n} lines to {output}")


@app.command()
def cancel(job_id: str, database_url: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Cancel a job: nothing new starts; results so far are kept."""
    changed = _client(database_url, None, dispatch=False).cancel(job_id)
    if json_out:
        out.print_json(data={"job_id": job_id, "cancelled": changed})
    else:
        err.print(f"job {job_id}: " + ("cancel requested" if changed else "already finished"))


@app.command()
def retry(
    job_id: str,
    status: Annotated[
        list[str] | None,
        typer.Option(help="Only items in this status (repeatable): failed, cancelled, expired"),
    ] = None,
    deadline: Annotated[str | None, typer.Option(help="A new completion window (30m, 24h)")] = None,
    database_url: DbOpt = None,
    broker_url: BrokerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-run a finished job's failed/cancelled/expired items, keeping its successes."""
    from genqueue.jobopts import parse_deadline

    n = _client(database_url, broker_url).retry(
        job_id, statuses=tuple(status) if status else None, deadline=parse_deadline(deadline)
    )
    if json_out:
        out.print_json(data={"job_id": job_id, "requeued": n})
    else:
        err.print(f"job {job_id}: {n} item(s) queued again")


@app.command()
def worker(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="The model this worker serves (same string as in submissions)"
        ),
    ],
    engine: Annotated[str, typer.Option(help="hf | deepspeed | dry-run")] = "hf",
    revision: Annotated[str | None, typer.Option()] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | float16 | bfloat16")] = "auto",
    processes: Annotated[
        int,
        typer.Option(
            help="Model processes, each loading the model once (0 = one per GPU, or 1 on CPU)"
        ),
    ] = 1,
    threads: Annotated[int, typer.Option(help="CPU threads per process (0 = split the cores)")] = 0,
    tensor_parallel: Annotated[int, typer.Option(help="GPUs per process (deepspeed engine)")] = 1,
    trust_remote_code: bool = False,
    host_memory_limit_mb: Annotated[
        int | None, typer.Option(help="CPU: halve a batch whose KV cache would exceed this")
    ] = None,
    loglevel: str = "INFO",
    database_url: DbOpt = None,
    broker_url: BrokerOpt = None,
) -> None:
    """Run worker processes for one model (foreground; SIGTERM stops them gracefully)."""
    from genqueue.worker.supervisor import Supervisor, WorkerSpec

    s = _settings(database_url, broker_url)
    if not s.broker_url or not s.database_url:
        raise GenqueueError(
            "a worker needs GENQUEUE_BROKER_URL and GENQUEUE_DATABASE_URL "
            "(or --broker-url and --database-url)"
        )
    env = {"GENQUEUE_BROKER_URL": s.broker_url, "GENQUEUE_DATABASE_URL": s.database_url}
    spec = WorkerSpec(
        model=model,
        engine=engine,
        revision=revision,
        device=device,
        dtype=dtype,
        processes=processes,
        threads=threads,
        tensor_parallel=tensor_parallel,
        trust_remote_code=trust_remote_code,
        host_memory_limit_mb=host_memory_limit_mb,
        loglevel=loglevel,
        env=env,
    )
    raise typer.Exit(Supervisor(spec).run_forever())


@app.command()
def scheduler(
    database_url: DbOpt = None, broker_url: BrokerOpt = None, loglevel: str = "INFO"
) -> None:
    """Run the reconciler: re-queue expired leases, rebuild lost queues, finalise jobs."""
    import signal
    import threading

    from genqueue.scheduler.dispatch import Dispatcher
    from genqueue.scheduler.reconciler import Reconciler
    from genqueue.storage.db import open_store

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(name)s %(message)s")
    s = _settings(database_url, broker_url)
    if not s.broker_url:
        raise GenqueueError("the scheduler needs GENQUEUE_BROKER_URL (or --broker-url)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    err.print("reconciler running (Ctrl-C to stop)")
    Reconciler(open_store(s.database_url), Dispatcher(s.broker_url), s).run(stop)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except GenqueueError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
