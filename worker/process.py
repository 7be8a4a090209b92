"""One worker process: load the model once, then consume its model's queue.

Each process is a Celery worker with the `solo` pool, so the process that loaded torch
never forks (forking after torch ran deadlocks libgomp). With prefetch (the default) the
Celery thread only claims and prepares tasks, and one model thread generates and
completes them (pipeline.py), so the next task is claimed while the current one
generates. Parallelism comes from running several such processes (supervisor.py), each
with its own thread budget or GPU.

Run as `python -m genqueue.worker.process [WorkerOptions flags] --name N` (the supervisor
does this; see WorkerOptions.to_args).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import socket
import sys
import threading
import warnings
from typing import Any

from celery import signals
from celery.exceptions import Reject, SecurityWarning
from celery.worker.request import Request
from kombu.exceptions import MessageStateError

from genqueue.broker import make_celery
from genqueue.protocol import TASK_NAME, queue_for, resolve_model_ref
from genqueue.scheduler.dispatch import Dispatcher
from genqueue.security import InsecureSettings, check_settings
from genqueue.settings import Settings
from genqueue.storage.db import open_store
from genqueue.storage.errors import SchemaMismatch
from genqueue.storage.migrate import check_schema
from genqueue.worker.errors import EXIT_ENGINE_ERROR, EngineError
from genqueue.worker.heartbeat import Presence
from genqueue.worker.pipeline import ModelThread, Pipeline
from genqueue.worker.runner import WorkerContext, run_task
from genqueue.worker.transient import is_transient
from genqueue.workeropts import WorkerOptions

log = logging.getLogger("genqueue.worker")


def parse_args(argv: list[str]) -> tuple[WorkerOptions, argparse.Namespace]:
    """The worker's options, and this process's own: its name and log level."""
    options, rest = WorkerOptions.from_args(argv)
    p = argparse.ArgumentParser(prog="genqueue.worker.process")
    p.add_argument("--name", default=None)
    p.add_argument("--loglevel", default="WARNING")
    return options, p.parse_args(rest)


def main(argv: list[str] | None = None) -> None:
    options, args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=args.loglevel.upper(),
        format="%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s",
    )
    # Celery warns when root could unpickle messages; genqueue accepts JSON only.
    warnings.filterwarnings("ignore", category=SecurityWarning)
    settings = Settings.from_env()
    if not settings.broker_url:
        raise SystemExit("GENQUEUE_BROKER_URL is not set (e.g. redis://localhost:6379/0)")
    try:
        check_settings(settings, "worker")
    except InsecureSettings as exc:
        raise SystemExit(f"genqueue worker: {exc}") from None
    if options.threads > 0:
        import torch

        torch.set_num_threads(options.threads)
    from genqueue.worker.engines import load_engine

    model_ref = resolve_model_ref(options.model)
    store = open_store(settings.database_url, migrate=False)
    try:
        check_schema(store)  # a worker never changes the schema under the others
    except SchemaMismatch as exc:
        raise SystemExit(f"genqueue worker: {exc}") from None
    # With prefetch, one model thread loads the engine and makes every generate call.
    model_thread = ModelThread() if settings.prefetch else None
    try:
        if model_thread is not None:
            engine = model_thread.call(lambda: load_engine(options))
        else:
            engine = load_engine(options)
    except EngineError as exc:
        log.error("genqueue worker: %s", exc)
        store.dispose()
        raise SystemExit(EXIT_ENGINE_ERROR) from None
    name = args.name or f"gq-{os.getpid()}@{socket.gethostname()}"
    app = make_celery(settings.broker_url, name="genqueue-worker", task_events=settings.task_events)
    queue = queue_for(model_ref, options.revision)
    dispatcher = Dispatcher(settings.broker_url, name="genqueue-worker-sender")

    ctx = WorkerContext(
        store=store,
        engine=engine,
        settings=settings,
        worker_id=name,
        send_tasks=functools.partial(dispatcher.send_ids, store),
        trust_remote_code=options.trust_remote_code,
    )
    pipeline = Pipeline(ctx, model_thread) if model_thread is not None else None

    @app.task(name=TASK_NAME, bind=True, acks_late=True, Request=settling_request(ctx.stop))
    def genqueue_run_task(self: Any, task_id: int) -> str:
        if ctx.stop.is_set():
            # Shutting down (the message came in with the shutdown, or is the task this
            # worker just released): hand it back untouched for another worker.
            raise Reject("worker stopping", requeue=True)
        try:
            if pipeline is not None:
                return pipeline.accept(int(task_id))
            return run_task(ctx, int(task_id))
        except Exception as exc:
            if is_transient(exc):
                # Not our fault and not the task's: put the message back for later.
                raise Reject(str(exc), requeue=True) from exc
            log.exception("task %s failed", task_id)
            raise

    @signals.worker_shutting_down.connect
    def _graceful(**_: Any) -> None:
        ctx.stop.set()

    log.info(
        "worker %s ready: model %s (%s, %s) on queue %s",
        name,
        model_ref,
        engine.info.engine,
        engine.info.device,
        queue,
    )
    presence = Presence(
        store,
        name,
        queue=queue,
        model=model_ref,
        engine=engine.info.engine,
        every=settings.heartbeat_seconds,
    )
    presence.start()
    worker = app.Worker(
        pool="solo",
        concurrency=1,
        queues=[queue],
        hostname=name,
        loglevel=args.loglevel,
        without_gossip=True,
        without_mingle=True,
        # Worker heartbeat events tell monitors (Flower) this worker is online; the
        # SQL heartbeat (Presence) is what genqueue itself trusts.
        without_heartbeat=not settings.task_events,
        quiet=True,
    )
    worker.start()
    presence.stop()
    if pipeline is not None:
        pipeline.close()
    engine.close()
    dispatcher.close()
    store.dispose()


def settling_request(stop: threading.Event) -> type[Request]:
    """Celery's task request, with an ack (or reject) that is retried until the broker
    answers.

    Celery logs a failed ack ("Couldn't ack", e.g. Redis restarted while the task ran)
    and moves on, but kombu still counts the message as unacknowledged: with a prefetch
    of 1 the worker then never fetches another message, and sits idle forever while
    its queue fills up. Retrying the ack once the broker is back settles the message
    (a no-op when Redis lost it) and frees the prefetch slot. A worker told to stop
    gives up instead; SQL already holds the task's outcome."""

    def settle(action: Any, what: str, errors: tuple[type[BaseException], ...]) -> None:
        delay = 0.2
        while True:
            try:
                action()
                return
            except MessageStateError:
                return  # already settled
            except errors as exc:
                if stop.is_set():
                    log.error("%s failed (%s); stopping anyway", what, exc)
                    return
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
                stop.wait(delay)
                delay = min(2.0, delay * 2)

    class SettlingRequest(Request):
        acknowledged: bool

        def acknowledge(self) -> None:
            if not self.acknowledged:
                settle(self.message.ack, f"acking {self.id}", self._connection_errors)
                self.acknowledged = True

        def reject(self, requeue: bool = False) -> None:
            if not self.acknowledged:
                settle(
                    lambda: self.message.reject(requeue=requeue),
                    f"rejecting {self.id}",
                    self._connection_errors,
                )
                self.acknowledged = True
                self.send_event("task-rejected", requeue=requeue)

    return SettlingRequest


if __name__ == "__main__":
    main()
    # Everything is recorded and closed: skip the interpreter's teardown (unloading
    # torch and transformers takes 3-4 s, which every shutdown would wait for).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
