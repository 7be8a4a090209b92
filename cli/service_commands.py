"""The long-running roles of a deployment: model workers and the scheduler (reconciler),
and `genqueue workers`, which lists the live workers."""

import logging
from typing import Annotated

import typer

from genqueue.cli.app import BrokerOpt, DbOpt, JsonOpt, app, err, out, settings
from genqueue.cli.errors import CliError
from genqueue.cli.options import OptionGroup, model_params, with_options
from genqueue.workeropts import WorkerOptions

_WORKER = OptionGroup(
    model_params(WorkerOptions, short={"model": "-m"}, panel="Model"),
    lambda values: WorkerOptions(**values),
)


@app.command()
@with_options(options=_WORKER)
def worker(
    processes: Annotated[
        int,
        typer.Option(
            help="Model processes, each loading the model once (0 = one per GPU, or 1 on CPU)"
        ),
    ] = 1,
    loglevel: str = "INFO",
    database_url: DbOpt = None,
    broker_url: BrokerOpt = None,
    *,
    options: WorkerOptions,
) -> None:
    """Run worker processes for one model (foreground; SIGTERM stops them gracefully)."""
    from genqueue.worker.supervisor import Supervisor, WorkerSpec

    s = settings(database_url, broker_url)
    if not s.broker_url or not s.database_url:
        raise CliError(
            "a worker needs GENQUEUE_BROKER_URL and GENQUEUE_DATABASE_URL "
            "(or --broker-url and --database-url)"
        )
    from genqueue.security import check_settings
    from genqueue.storage.db import open_store
    from genqueue.storage.migrate import check_schema

    check_settings(s, "worker")
    store = open_store(s.database_url, migrate=False)
    try:
        check_schema(store)  # one clear line now, rather than from every process
    finally:
        store.dispose()
    spec = WorkerSpec(
        options=options,
        processes=processes,
        loglevel=loglevel,
        env=s.child_env(),
        fork_server=s.fork_server,
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
    s = settings(database_url, broker_url)
    if not s.broker_url:
        raise CliError("the scheduler needs GENQUEUE_BROKER_URL (or --broker-url)")
    from genqueue.security import check_settings

    check_settings(s, "scheduler")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from genqueue.scheduler.webhooks import Deliverer

    err.print("reconciler running (Ctrl-C to stop)")
    store = open_store(s.database_url)
    delivering = Deliverer(store, s).start(stop)  # webhooks, beside the reconciler
    Reconciler(store, Dispatcher(s.broker_url), s).run(stop)
    delivering.join(timeout=s.webhook_timeout_seconds + 5)


@app.command()
def workers(
    database_url: DbOpt = None,
    json_out: JsonOpt = False,
    all_rows: Annotated[
        bool, typer.Option("--all", help="Also list workers whose heartbeat went stale")
    ] = False,
) -> None:
    """List live workers by model (from their SQL heartbeats): what each works on, its
    heartbeat age and items/s; and the models with queued work but no live worker."""
    from pathlib import Path

    from rich.table import Table

    from genqueue.storage import workers as worker_rows
    from genqueue.storage.db import open_store
    from genqueue.workeropts import start_command

    s = settings(database_url, None)
    store = open_store(s.database_url)
    try:
        found = worker_rows.list_workers(store, within_seconds=s.lease_seconds)
        depths = worker_rows.queue_depths(store, within_seconds=s.lease_seconds)
    finally:
        store.dispose()
    shown = [w for w in found if all_rows or w.live]
    data = [
        {
            "name": w.name,
            "host": w.host,
            "model": w.model,
            "engine": w.engine,
            "queue": w.queue,
            "live": w.live,
            "tasks": [
                {"task_id": t.task_id, "job_id": t.job_id, "done": t.done, "items": t.n_items}
                for t in w.tasks
            ],
            "heartbeat_age_s": round(w.heartbeat_age, 1),
            "items_per_second": w.items_per_second,
        }
        for w in shown
    ]
    queues = [
        {
            "model": q.model,
            "revision": q.revision,
            "queue": q.queue,
            "waiting": q.waiting,
            "running": q.running,
            "live_workers": q.live_workers,
            "start": start_command(q.model, revision=q.revision) if q.unserved else None,
        }
        for q in depths
    ]
    if json_out:
        out.print_json(data={"workers": data, "queues": queues})
        return
    if data:
        table = Table("name", "host", "model", "engine", "task", "heartbeat", "items/s")
        for d in data:
            task = ", ".join(
                f"{t['task_id']} ({t['done']}/{t['items']}) of {t['job_id']}" for t in d["tasks"]
            )
            table.add_row(
                d["name"],
                d["host"],
                Path(d["model"]).name or d["model"],
                d["engine"] or "",
                task or "idle",
                f"{d['heartbeat_age_s']:.1f}s ago" + ("" if d["live"] else " (stale)"),
                f"{d['items_per_second']:.2f}",
            )
        out.print(table)
    else:
        err.print("no live worker")
    for q in queues:
        if q["start"]:
            err.print(
                f"[yellow]warning:[/] {q['waiting'] + q['running']} item(s) wait for model "
                f"{q['model']}, which no live worker serves; start one with: {q['start']}",
                highlight=False,
            )
