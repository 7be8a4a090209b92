"""The long-running roles of a deployment: model workers and the scheduler (reconciler)."""

import logging
from typing import Annotated

import typer

from genqueue.cli.app import BrokerOpt, DbOpt, app, err, settings
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
    spec = WorkerSpec(options=options, processes=processes, loglevel=loglevel, env=s.child_env())
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
