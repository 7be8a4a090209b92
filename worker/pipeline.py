"""Prefetch one task: while the model generates one task, the next is claimed and
prepared, and a task's end and the next one's start commit together."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from genqueue.storage import leases
from genqueue.worker.runner import Running, WorkerContext, complete, generate, prepare
from genqueue.worker.transient import retry_transient

log = logging.getLogger(__name__)

T = TypeVar("T")


class ModelThread:
    """The one thread that loads the model and then makes every generate call.

    An engine may set up per-thread state when it loads: vLLM's CPU backend configures
    the OpenMP team of the thread that built it, and the same calls made from another
    thread ran 1.5x slower (bench/vllm_bench.py). Loading on the thread that will
    generate keeps the two together, whatever the engine."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], object], Future[object]]] = queue.Queue()
        # A daemon: a worker whose main thread fails must still exit.
        self._thread = threading.Thread(target=self._serve, name="model", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            fn, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def start(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the model thread, after what it was given before."""
        future: Future[T] = Future()
        self._jobs.put((fn, future))  # type: ignore[arg-type]
        return future

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the model thread and return (or raise) what it did."""
        return self.start(fn).result()


class Pipeline:
    """Runs tasks one stage apart: while the model generates task N, the Celery thread
    claims and prepares task N+1 (prefetch one task). Only one task ever waits.

    `accept` returns once the model thread took the task it was given, so the broker
    message of the next task is fetched, and that task claimed, while this one
    generates. The SQL lease, not the broker message, keeps an accepted task safe: if
    the process dies, the lease expires and the task is re-queued.

    A prefetched task is only held: its attempt begins in the transaction that
    completes the task before it, so a task is fully recorded before the next one's
    work starts, and a task that only waited is never charged an attempt when a poison
    item kills the worker."""

    def __init__(self, ctx: WorkerContext, model_thread: ModelThread | None = None) -> None:
        self.ctx = ctx
        self._waiting: queue.Queue[Running | None] = queue.Queue(maxsize=1)
        self._busy = threading.Event()  # the model thread has a task (any stage)
        # The thread that loaded the engine, when there is one (see ModelThread).
        self._model = (model_thread or ModelThread()).start(self._loop)

    def accept(self, task_id: int) -> str:
        # A task that will start at once (the model thread is idle: nothing else can
        # take it first) counts its attempt when claimed; one that will wait is held.
        got = prepare(self.ctx, task_id, begin=not self._busy.is_set())
        if isinstance(got, str):
            return got
        self._busy.set()
        self._waiting.put(got)
        got.started.wait()
        return "accepted"

    def _loop(self) -> None:
        try:
            self._run_loop()
        except BaseException:
            # Nothing would generate or finish this worker's tasks any more: exit, so
            # their leases expire and the supervisor starts a fresh process.
            log.critical("the model thread failed; exiting", exc_info=True)
            logging.shutdown()
            os._exit(70)

    def _run_loop(self) -> None:
        prev: Running | None = None  # generated, not yet completed
        while True:
            if prev is None:
                self._busy.clear()
                run = self._waiting.get()
            else:
                try:
                    run = self._waiting.get_nowait()
                except queue.Empty:
                    self._complete(prev, None)  # nothing waits: complete it alone
                    prev = None
                    continue
            if run is None:
                if prev is not None:
                    self._complete(prev, None)
                return
            stopping = self.ctx.stop.is_set()  # shutting down: release it untouched
            start = None if run.claim.begun or stopping else run
            if prev is not None:  # complete it, and begin this one, in one commit
                began = self._complete(prev, start)
            else:
                began = self._begin(run) if start else None
            # The Celery thread may fetch and claim the next task now: the previous one
            # is committed, so at most this one and the next are held.
            run.started.set()
            if stopping:
                run.outcome = "stopped"
            elif began is False:
                run.outcome = "lease_lost"  # it waited too long: someone else has it now
            else:
                try:
                    generate(self.ctx, run)
                except Exception:
                    log.exception("task %s failed", run.claim.task_id)
            prev = run

    def _complete(self, run: Running, begin_next: Running | None) -> bool | None:
        try:
            return complete(self.ctx, run, begin_next)
        except Exception:
            # Could not record the end (database down for long): the lease expires and
            # the reconciler re-queues the task.
            log.exception("finishing task %s failed", run.claim.task_id)
            return False if begin_next is not None else None

    def _begin(self, run: Running) -> bool:
        try:
            return bool(
                retry_transient(
                    lambda: leases.begin_attempt(self.ctx.store, run.claim),
                    what=f"starting task {run.claim.task_id}",
                    stop=None,
                )
            )
        except Exception:
            log.exception("starting task %s failed", run.claim.task_id)
            return False

    def close(self, timeout: float | None = None) -> None:
        """Finish what was accepted (a stopping worker ends its tasks after the
        micro-batch in flight), then stop the model thread."""
        self._waiting.put(None)
        try:
            self._model.result(timeout)
        except TimeoutError:
            log.warning("the model thread did not finish within %s s", timeout)
