"""Commands about jobs: run one here, submit one, and look at, export, cancel or retry it.

No `from __future__ import annotations` in command modules: Typer reads the options
from the real annotation objects of each command.
"""

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from genqueue import formats
from genqueue.cli.app import (
    BrokerOpt,
    DbOpt,
    JsonOpt,
    StateOpt,
    app,
    client,
    default_output,
    err,
    open_input,
    out,
    settings,
    summary,
)
from genqueue.cli.errors import LocalWorkersError, OptionError
from genqueue.cli.jobopts import JOB_OPTIONS, JobOptions, parse_deadline
from genqueue.cli.options import OptionGroup, model_params, with_options
from genqueue.workeropts import WorkerOptions

#: `genqueue run`'s worker options: the job gives the model, revision and remote-code
#: choice, the rest are WorkerOptions' own flags.
_RUN_WORKERS = OptionGroup(
    model_params(
        WorkerOptions, exclude=("model", "revision", "trust_remote_code"), panel="Workers"
    ),
    dict,
)


@app.command()
@with_options(job=JOB_OPTIONS, worker_options=_RUN_WORKERS)
def run(
    input: Annotated[str, typer.Argument(help="Input file (.jsonl/.csv/.parquet) or - for stdin")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Results file (.jsonl/.csv/.parquet); default: next to the input"
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(help="Local worker processes (0 = one per GPU, or per 1-2 CPU cores)", min=0),
    ] = 0,
    state_dir: Annotated[
        Path | None, typer.Option(help="Where the embedded database and Redis live")
    ] = None,
    results_format: Annotated[
        str | None,
        typer.Option(help=f"{' | '.join(formats.names('output'))} (default: from -o's extension)"),
    ] = None,
    errors: Annotated[
        str | None,
        typer.Option(help="With --results-format openai: write failed lines to this file"),
    ] = None,
    json_out: JsonOpt = False,
    *,
    job: JobOptions,
    worker_options: dict[str, Any],
) -> None:
    """Run a job end to end on this machine: embedded Redis + SQLite + local workers."""
    # Only what checks the options and starts the fork server is imported before it
    # starts; SQLAlchemy and the rest load while it imports torch.
    from genqueue.protocol import cache_dir, resolve_model_ref

    started = time.monotonic()
    kwargs = job.submit_kwargs()
    target = output or default_output(input)
    _check_output(target, results_format, errors)
    model = resolve_model_ref(kwargs["model"]) if kwargs["model"] else None
    _run_here(
        state_dir or cache_dir() / "embedded",
        lambda gq: gq.submit(open_input(input), **kwargs),
        LocalWorkers(
            workers,
            worker_options,
            revision=kwargs["revision"],
            trust_remote_code=kwargs["trust_remote_code"],
            first_model=model,
        ),
        target=target,
        results_format=results_format,
        errors=errors,
        json_out=json_out,
        started=started,
    )


def _check_output(target: str, results_format: str | None, errors: str | None) -> None:
    """A bad -o / --errors fails now, before anything starts."""
    from genqueue.scheduler.targets import check_targets, export_format

    fmt = export_format(target, results_format, flag="--results-format")
    if fmt != "openai" and errors is not None:
        raise OptionError("--errors goes with --results-format openai")
    check_targets(target, errors)


class LocalWorkers:
    """The worker processes a run on this machine starts: `count` in all (0: one per
    GPU, or per 1-2 CPU cores), split evenly between the job's models."""

    def __init__(
        self,
        count: int,
        options: dict[str, Any],
        *,
        revision: str | None,
        trust_remote_code: bool,
        first_model: str | None,
    ) -> None:
        from genqueue.worker.supervisor import visible_gpus

        gpus = visible_gpus() if options.get("device") != "cpu" else []
        self.count = count or max(1, len(gpus) if gpus else min(4, os.cpu_count() or 1))
        self.options = options
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        #: The model known before the job exists, whose workers start first.
        self.first_model = first_model

    def spec(self, model: str, models: list[str], log_dir: Path) -> Any:
        """The workers for `model`, one of the job's `models`."""
        from genqueue.worker.supervisor import WorkerSpec

        per_model = max(1, self.count // len(models))
        threads = self.options.get("threads") or (
            max(1, (os.cpu_count() or 1) // (per_model * len(models))) if len(models) > 1 else 0
        )
        return WorkerSpec(
            options=WorkerOptions(
                model=model,
                revision=self.revision,
                trust_remote_code=self.trust_remote_code,
                **{**self.options, "threads": threads},
            ),
            processes=per_model,
            log_dir=str(log_dir),
            fork_server=settings().fork_server,
        )


def _run_here(
    state: Path,
    begin: Any,
    workers: LocalWorkers,
    *,
    target: str,
    results_format: str | None,
    errors: str | None,
    json_out: bool,
    started: float,
) -> None:
    """Run a job on this machine, on embedded Redis + the state dir's database + local
    workers: `begin(client)` submits it (or queues a job's items again) and returns its
    id. Follows it to the end and writes every line to `target`; exits 1 unless it
    completed."""
    from genqueue.worker.supervisor import Supervisor

    config = settings()
    serving: dict[str, Any] = {}

    def log_dir() -> Path:
        return state / "logs" / str(len(serving))

    # A model known before the job exists: its fork server (if its workers are forked)
    # imports torch, transformers and the model's classes while the embedded Redis and
    # database start; the workers it forks load the model while the input is stored.
    early: Supervisor | None = None
    if workers.first_model:
        first = workers.first_model
        early = Supervisor(workers.spec(first, [first], log_dir()))
        early.prepare()
    try:
        from genqueue.cli.embedded import EmbeddedStack
        from genqueue.cli.progress import follow

        stack = EmbeddedStack.start(state, config)
    except BaseException:
        if early is not None:
            early.stop(grace=1)
        raise
    try:
        from genqueue.client import Client

        def start_workers(models: list[str]) -> None:
            """Workers for each of `models` not served yet."""
            for model in models:
                if model in serving:
                    continue
                mine = early is not None and early.spec.options.model == model
                serving[model] = stack.start_workers(
                    workers.spec(model, models, log_dir()), early if mine else None
                )

        if workers.first_model:
            # The workers load the model while this process validates and stores the input.
            start_workers([workers.first_model])
        gq = Client(settings=stack.settings)
        job_id = begin(gq)
        st = gq.status(job_id)
        models = list(dict.fromkeys(st["models"] if "models" in st else [st["model"]]))
        start_workers(models)
        sups = [serving[m] for m in models]
        if not json_out:
            err.print(
                f"[bold]{job_id}[/]: {st['counts']['total']} items, "
                f"{sum(s.spec.processes for s in sups)} worker process(es), "
                f"model(s) {', '.join(Path(m).name for m in models)}"
            )
        stack.start_reconciler()

        def check() -> None:
            for sup in sups:
                sup.poll()  # restarts a process that died (its task is leased again)
                if sup.engine_error is not None:
                    raise LocalWorkersError(
                        f"the worker processes cannot load model {sup.spec.options.model}: "
                        f"{sup.engine_error}"
                    )
                if min(sup.restarts) >= 3 and gq.status(job_id)["counts"]["succeeded"] == 0:
                    raise LocalWorkersError(
                        "the worker processes keep exiting before doing any work; the end of "
                        f"{sup.log_path(0)}:\n{sup.log_tail(0)}"
                    )

        try:
            final = follow(lambda: gq.status(job_id), err, check=check, poll=0.2)
        except KeyboardInterrupt:
            err.print(
                "[yellow]interrupted: cancelling the job; the micro-batches running finish "
                "and the results are written (Ctrl-C again to write them now)[/]"
            )
            gq.cancel(job_id)
            final = _settle_cancel(gq, job_id)
        # Nothing is left to do: the workers shut down while the results are exported.
        for sup in stack.supervisors:
            sup.signal_stop()
        n_lines = gq.export(
            job_id, target, format=results_format, include_pending=True, errors=errors
        )
        elapsed = time.monotonic() - started
        if json_out:
            out.print_json(
                data={**final, "results": target, "lines": n_lines, "elapsed_s": round(elapsed, 3)}
            )
        else:
            err.print(summary(final, elapsed))
            err.print(f"results: [bold]{target}[/] ({n_lines} lines)")
        gq.close()
    finally:
        stack.close()
    if final["state"] not in ("completed", "completed_with_errors"):
        raise typer.Exit(1)


#: How long an interrupted `genqueue run` waits for its running micro-batches.
CANCEL_SETTLE_SECONDS = 120.0


def _settle_cancel(gq: Any, job_id: str) -> dict[str, Any]:
    """The status of a job just cancelled, once it has ended: the running micro-batches
    finish (their results are kept), the rest become `cancelled`. A second Ctrl-C, or
    CANCEL_SETTLE_SECONDS, stops the wait; the lines not ended then show `pending`."""
    from genqueue.storage.models import FINAL_JOB_STATES

    deadline = time.monotonic() + CANCEL_SETTLE_SECONDS
    st = gq.status(job_id)
    try:
        while st["state"] not in FINAL_JOB_STATES and time.monotonic() < deadline:
            time.sleep(0.1)
            st = gq.status(job_id)
    except KeyboardInterrupt:
        err.print(
            "[yellow]not waiting: items still running are written as pending; once the job "
            f"has ended, `genqueue results {job_id} -o FILE` writes what it holds[/]"
        )
        st = gq.status(job_id)
    return st


@app.command()
@with_options(job=JOB_OPTIONS)
def submit(
    input: Annotated[str, typer.Argument(help="Input file (.jsonl/.csv/.parquet) or - for stdin")],
    wait: Annotated[bool, typer.Option(help="Wait for the job and show progress")] = False,
    database_url: DbOpt = None,
    broker_url: BrokerOpt = None,
    json_out: JsonOpt = False,
    *,
    job: JobOptions,
) -> None:
    """Submit a job to a deployment (GENQUEUE_DATABASE_URL + GENQUEUE_BROKER_URL); prints its id."""
    gq = client(database_url, broker_url, existing=False)
    job_id = gq.submit(open_input(input), **job.submit_kwargs())
    if json_out and not wait:
        out.print_json(data={"job_id": job_id})
    elif not wait:
        out.print(job_id)
    if wait:
        from genqueue.cli.progress import follow

        err.print(f"job {job_id} submitted")
        final = follow(lambda: gq.status(job_id), err)
        if json_out:
            out.print_json(data=final)
        else:
            err.print(summary(final))
        if final["state"] not in ("completed", "completed_with_errors"):
            raise typer.Exit(1)


#: What `genqueue status` shows of a job, in this order (when set).
_STATUS_FIELDS = (
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
)


@app.command()
def status(
    job_id: str, database_url: DbOpt = None, state_dir: StateOpt = None, json_out: JsonOpt = False
) -> None:
    """Show a job's (or batch's) state and counts; warn when its model has no live worker."""
    gq = client(database_url, None, dispatch=False, state_dir=state_dir)
    st = gq.status(job_id)
    warn_unserved(gq.store, [j["job_id"] for j in st.get("jobs") or [st]])
    if json_out:
        out.print_json(data=st)
        return
    table = Table(show_header=False, box=None)
    for key in ("batch_id", *_STATUS_FIELDS):
        if st.get(key) is not None:
            table.add_row(key, str(st[key]))
    if st.get("chat"):
        table.add_row("chat", "true (prompts sent through the chat template)")
    table.add_row("items", ", ".join(f"{k} {v}" for k, v in st["counts"].items()))
    if st["duplicate_executions"]:
        table.add_row("duplicate executions", str(st["duplicate_executions"]))
    if st.get("reused"):
        table.add_row("reused", f"{st['reused']} items copied from identical earlier items")
    from genqueue.storage.status import JobCounts

    for j in st.get("jobs", ()):
        c = j["counts"]
        done = JobCounts.from_dict(c).done
        table.add_row(
            f"job {j['job_id']}", f"{j['state']}, {Path(j['model']).name}, {done}/{c['total']}"
        )
    out.print(table)


def warn_unserved(store: Any, job_ids: list[str]) -> None:
    """A warning on stderr for each live job whose model no live worker serves, with the
    command that starts one."""
    from genqueue.storage.workers import unserved_jobs
    from genqueue.workeropts import start_command

    for u in unserved_jobs(store, job_ids, within_seconds=settings().lease_seconds):
        command = start_command(
            u.model, revision=u.revision, engine=u.engine, trust_remote_code=u.trust_remote_code
        )
        err.print(
            f"[yellow]warning:[/] no live worker serves the model of job {u.job_id} "
            f"({u.model}); its items wait until one starts: {command}",
            highlight=False,
        )


@app.command()
def jobs(
    database_url: DbOpt = None,
    state_dir: StateOpt = None,
    json_out: JsonOpt = False,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state")] = None,
    limit: int = 50,
) -> None:
    """List recent jobs."""
    from genqueue.storage.models import JobState

    listed = [s.value for s in JobState if s is not JobState.SUBMITTING]
    if state is not None and state not in listed:
        raise OptionError(f"--state {state!r} is no job state; use one of {', '.join(listed)}")
    rows = client(database_url, None, dispatch=False, state_dir=state_dir).jobs(
        limit=limit, state=state
    )
    if json_out:
        out.print_json(data=rows)
        return
    from genqueue.storage.status import JobCounts

    # Ids are what the other commands take: shown whole, on narrow terminals too.
    job_column = Column("job", no_wrap=True, min_width=32, overflow="ignore")
    state_column = Column("state", no_wrap=True, min_width=9)
    table = Table(job_column, state_column, "kind", "model", "done/total", "failed", "created")
    for r in rows:
        c = r["counts"]
        table.add_row(
            r["job_id"],
            r["state"],
            r["kind"],
            Path(r["model"]).name,
            f"{JobCounts.from_dict(c).done}/{c['total']}",
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
    fmt: Annotated[
        str | None, typer.Option("--format", help=" | ".join(formats.names("output")))
    ] = None,
    include_pending: Annotated[
        bool, typer.Option(help="Also list items without a result yet")
    ] = False,
    errors: Annotated[
        str | None,
        typer.Option(
            "--errors", help="With --format openai: write failed, cancelled, expired lines here"
        ),
    ] = None,
    database_url: DbOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """Export a job's or batch's results (on a running one: what is done so far)."""
    n = client(database_url, None, dispatch=False, state_dir=state_dir).export(
        job_id, output, format=fmt, include_pending=include_pending, errors=errors
    )
    if output != "-":
        err.print(
            f"wrote {n} lines to {output}"
            + (f" and {errors} (failed, cancelled and expired lines there)" if errors else "")
        )


@app.command()
def cancel(
    job_id: str, database_url: DbOpt = None, state_dir: StateOpt = None, json_out: JsonOpt = False
) -> None:
    """Cancel a job: nothing new starts; results so far are kept."""
    changed = client(database_url, None, dispatch=False, state_dir=state_dir).cancel(job_id)
    if json_out:
        out.print_json(data={"job_id": job_id, "cancelled": changed})
    else:
        err.print(f"job {job_id}: " + ("cancel requested" if changed else "already finished"))


#: `genqueue retry --local`'s worker options, each unset by default: the job's own
#: choices (the engine that ran it) apply then.
_RETRY_WORKERS = OptionGroup(
    model_params(
        WorkerOptions,
        exclude=("model", "revision", "trust_remote_code"),
        panel="Workers (with --local)",
        optional=True,
    ),
    dict,
)


@app.command()
@with_options(worker_options=_RETRY_WORKERS)
def retry(
    job_id: str,
    status: Annotated[
        list[str] | None,
        typer.Option(help="Only items in this status (repeatable): failed, cancelled, expired"),
    ] = None,
    deadline: Annotated[str | None, typer.Option(help="A new completion window (30m, 24h)")] = None,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Run the items here, as `genqueue run` does (embedded Redis, the state "
            "dir's database, local workers), then write every line to -o",
        ),
    ] = False,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="With --local: the results file; default: next to the input"
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="With --local: worker processes (0 = as genqueue run)", min=0)
    ] = 0,
    results_format: Annotated[
        str | None, typer.Option(help="With --local: as genqueue run's --results-format")
    ] = None,
    errors: Annotated[
        str | None,
        typer.Option(help="With --local and --results-format openai: failed lines' file"),
    ] = None,
    database_url: DbOpt = None,
    broker_url: BrokerOpt = None,
    state_dir: StateOpt = None,
    json_out: JsonOpt = False,
    *,
    worker_options: dict[str, Any],
) -> None:
    """Re-run a finished job's failed/cancelled/expired items, keeping its successes."""
    statuses = tuple(status) if status else None
    when = parse_deadline(deadline)
    if local:
        _retry_here(
            job_id,
            statuses,
            when,
            database_url=database_url,
            broker_url=broker_url,
            state_dir=state_dir,
            target=output,
            workers=workers,
            results_format=results_format,
            errors=errors,
            worker_options={k: v for k, v in worker_options.items() if v is not None},
            json_out=json_out,
        )
        return
    given: dict[str, Any] = {"-o": output, "--results-format": results_format, "--errors": errors}
    given |= {"--workers": workers or None}
    given |= {f"--{k.replace('_', '-')}": v for k, v in worker_options.items()}
    stray = [flag for flag, value in given.items() if value is not None]
    if stray:
        raise OptionError(f"{', '.join(stray)} go(es) with --local (run the items here)")
    gq = client(database_url, broker_url, state_dir=state_dir)
    n = gq.retry(job_id, statuses=statuses, deadline=when)
    if json_out:
        out.print_json(data={"job_id": job_id, "requeued": n})
    else:
        err.print(f"job {job_id}: {n} item(s) queued again")
        if n and not gq.settings.broker_url:
            err.print(
                "[yellow]no broker is configured (--broker-url, GENQUEUE_BROKER_URL): the items "
                "run once a deployment's scheduler sends them to its workers; to run them "
                "here, use --local[/]"
            )


def _retry_here(
    job_id: str,
    statuses: tuple[str, ...] | None,
    deadline: Any,
    *,
    database_url: str | None,
    broker_url: str | None,
    state_dir: Path | None,
    target: str | None,
    workers: int,
    results_format: str | None,
    errors: str | None,
    worker_options: dict[str, Any],
    json_out: bool,
) -> None:
    """`genqueue retry --local`: the job's items queued again and run on this machine, on
    the database of `genqueue run` (the state dir), then every line written to `target`."""
    from genqueue.protocol import cache_dir, queue_revision
    from genqueue.scheduler.exports import job_rows
    from genqueue.storage.models import FINAL_JOB_STATES
    from genqueue.storage.retry import RETRYABLE

    if database_url or broker_url:
        raise OptionError(
            "--local runs on the embedded database of `genqueue run` (--state-dir); "
            "a deployment's job is retried without --local and runs on its workers"
        )
    started = time.monotonic()
    state = state_dir or cache_dir() / "embedded"
    with client(None, None, dispatch=False, state_dir=state) as gq:
        st = gq.status(job_id)
        jobs = job_rows(gq.store, job_id)
    finished = st["state"] in FINAL_JOB_STATES
    wanted = statuses or RETRYABLE
    if finished and not sum(st["counts"].get(name, 0) for name in wanted):
        message = f"job {job_id}: no {' or '.join(wanted)} items to run again"
        if json_out:
            out.print_json(data={"job_id": job_id, "requeued": 0})
        else:
            err.print(message)
        return
    target = target or default_output(st.get("input") or "-")
    _check_output(target, results_format, errors)
    first = jobs[0]
    options = dict(worker_options)
    if first.engine and "engine" not in options:
        options["engine"] = first.engine  # the engine that ran it, unless told otherwise
    if not finished and not json_out:
        # Its items were queued again (or it was never run to its end) here, and no
        # worker runs them: they run now.
        err.print(f"job {job_id} is {st['state']}: running its unfinished items")

    def begin(gq: Any) -> str:
        if finished:
            gq.retry(job_id, statuses=statuses, deadline=deadline)
        return job_id

    _run_here(
        state,
        begin,
        LocalWorkers(
            workers,
            options,
            revision=queue_revision(first.model, first.queue, first.revision),
            trust_remote_code=bool((first.options or {}).get("trust_remote_code")),
            first_model=first.model if len(jobs) == 1 else None,
        ),
        target=target,
        results_format=results_format,
        errors=errors,
        json_out=json_out,
        started=started,
    )
