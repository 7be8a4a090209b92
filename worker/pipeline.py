"""Prefetch one task: while the model generates one task, the next is claimed and
prepared, and a task's end and the next one's start commit together. For an engine
that batches continuously, first attempts are gathered and generated together."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from genqueue.storage import leases
from genqueue.worker.batching import continuous_items
from genqueue.worker.runner import Running, WorkerContext, complete, generate_together, prepare
from genqueue.worker.transient import retry_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long an idle model thread with an engine that batches continuously waits for
#: more tasks to join the first one's call (the Celery thread claims one every few ms).
GANG_LINGER = 0.25


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
    claims and prepares task N+1 (prefetch one task). Only one task ever waits
    (but see gangs, below).

    `accept` returns once the model thread took the task it was given, so the broker
    message of the next task is fetched, and that task claimed, while this one
    generates. The SQL lease, not the broker message, keeps an accepted task safe: if
    the process dies, the lease expires and the task is re-queued.

    A prefetched task is only held: its attempt begins in the transaction that
    completes the task before it, so a task is fully recorded before the next one's
    work starts, and a task that only waited is never charged an attempt when a poison
    item kills the worker.

    An engine that batches continuously (vLLM, see batching.continuous_items) runs
    fastest on calls of hundreds of requests, more than one task holds. For it the
    pipeline holds first attempts until they add up to that many items (`gang_items`)
    and generates them together in one call (an idle model waits up to `linger` seconds
    for a first task's companions to be claimed); a retried task (its attempt > 1: it may
    hold a poison item) always runs alone, so a crash is charged to it only."""

    def __init__(
        self,
        ctx: WorkerContext,
        model_thread: ModelThread | None = None,
        *,
        gang_items: int | None = None,
        linger: float = GANG_LINGER,
    ) -> None:
        self.ctx = ctx
        self.gang_items = continuous_items(ctx.engine) if gang_items is None else gang_items
        self.linger = linger
        self._cv = threading.Condition()
        self._waiting: deque[Running] = deque()  # accepted, not yet taken by the model
        self._closing = False
        self._busy = threading.Event()  # the model thread has a task (any stage)
        # The thread that loaded the engine, when there is one (see ModelThread).
        self._model = (model_thread or ModelThread()).start(self._loop)

    def accept(self, task_id: int) -> str:
        # A task that will start at once (the model thread is idle: nothing else can
        # take it first) counts its attempt when claimed; one that will wait is held.
        got = prepare(self.ctx, task_id, begin=not self._busy.is_set())
        if isinstance(got, str):
            return got
        with self._cv:
            self._busy.set()
            self._waiting.append(got)
            self._cv.notify_all()
            self._cv.wait_for(lambda: got.started.is_set() or self._room())
        return "accepted"

    def _room(self) -> bool:
        """Whether the Celery thread may fetch another task while these wait: only to
        fill the next gang (called holding the lock)."""
        if self.gang_items <= 0:
            return False
        held = 0
        for run in self._waiting:
            if run.claim.attempt > 1:
                return False  # it will run alone next: nothing to gather
            held += len(run.requests)
        return held < self.gang_items

    def _take(self, block: bool) -> list[Running] | None:
        """The next tasks to generate: one, or a gang of first attempts with one policy
        up to `gang_items` items. [] when nothing waits (not blocking); None when
        closing and nothing waits."""
        with self._cv:
            if block:
                if not self._waiting:
                    self._busy.clear()
                self._cv.wait_for(lambda: bool(self._waiting) or self._closing)
                if self.gang_items > 0 and self._room():
                    # The model was idle: the tasks sent with this one arrive one claim
                    # apart; wait a moment for them rather than start a call of one.
                    self._cv.wait_for(lambda: self._closing or not self._room(), self.linger)
            if not self._waiting:
                return None if self._closing else []
            first = self._waiting.popleft()
            runs = [first]
            if self.gang_items > 0 and first.claim.attempt == 1:
                total = len(first.requests)
                while self._waiting:
                    nxt = self._waiting[0]
                    if (
                        nxt.claim.attempt > 1
                        or nxt.policy != first.policy
                        or total + len(nxt.requests) > self.gang_items
                    ):
                        break
                    runs.append(self._waiting.popleft())
                    total += len(nxt.requests)
            return runs

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
        prev: list[Running] = []  # generated, not yet completed
        while True:
            runs = self._take(block=not prev)
            if not runs:
                for done in prev:  # nothing waits: complete them alone
                    self._complete(done, None)
                prev = []
                if runs is None:
                    return
                continue
            stopping = self.ctx.stop.is_set()  # shutting down: release them untouched
            to_begin = [] if stopping else [r for r in runs if not r.claim.begun]
            began: dict[int, bool | None] = {}
            for i, done in enumerate(prev):
                # The last one completes, and the first to begin begins, in one commit.
                nxt = to_begin[0] if to_begin and i == len(prev) - 1 else None
                ok = self._complete(done, nxt)
                if nxt is not None:
                    began[id(nxt)] = ok
            for run in to_begin:
                if id(run) not in began:
                    began[id(run)] = self._begin(run)
            # The Celery thread may fetch and claim the next task now: the previous ones
            # are committed, so at most these and the next gang are held.
            with self._cv:
                for run in runs:
                    run.started.set()
                self._cv.notify_all()
            live = []
            for run in runs:
                if stopping:
                    run.outcome = "stopped"
                elif began.get(id(run)) is False:
                    run.outcome = "lease_lost"  # it waited too long: someone else has it
                else:
                    live.append(run)
            if live:
                try:
                    generate_together(self.ctx, live)
                except Exception:
                    log.exception("tasks %s failed", [r.claim.task_id for r in live])
            prev = runs

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
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        try:
            self._model.result(timeout)
        except TimeoutError:
            log.warning("the model thread did not finish within %s s", timeout)
