"""Running one task: claim its lease, generate in micro-batches, write results, finish.

A plain function over a `WorkerContext`; the Celery task is a thin adapter around it and
tests call it directly. While the model generates, a heartbeat thread keeps the lease and
a writer thread stores the previous micro-batch's results, so the model rarely waits on
SQL. The last micro-batch, the end of the attempt and (for a job's last task) the job's
final state commit in one transaction. Results are written idempotently, so a task run
twice stores each item once.

A worker process with prefetch runs tasks through a `Pipeline`: its Celery thread claims
and prepares the next task while one model thread generates, so the model does not
wait for SQL between tasks. Only that thread (or `run_task`, without prefetch) ever
calls the engine.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from genqueue.params import GenerationParams, derive_seed
from genqueue.settings import Settings
from genqueue.storage import jobs, leases
from genqueue.storage.completion import complete_task
from genqueue.storage.db import Store
from genqueue.storage.leases import Claim, ClaimRefused
from genqueue.storage.models import ResultStatus
from genqueue.storage.results import NewResult, write_results
from genqueue.worker.batching import BatchPolicy, generate_all
from genqueue.worker.engines.base import Engine, GenRequest, GenResult
from genqueue.worker.retry import retry_transient

log = logging.getLogger(__name__)

#: Between micro-batches, a running task asks SQL whether it should stop (cancelled,
#: expired, lease lost) at most this often.
STOP_CHECK_SECONDS = 0.1


@dataclass
class WorkerContext:
    """What a worker process holds for its whole life: one store, one loaded engine."""

    store: Store
    engine: Engine
    settings: Settings
    worker_id: str
    #: Sends task ids to the broker (split or released tasks); None leaves it to the
    #: reconciler.
    send_tasks: Callable[[list[int]], None] | None = None
    #: Set on graceful shutdown: the task stops after its in-flight micro-batch.
    stop: threading.Event = field(default_factory=threading.Event)


def item_seed(job_seed: int | None, item_params: dict[str, object] | None, idx: int) -> int | None:
    """An item's own seed: its explicit override, else derived from the job seed and the
    item index, so its sampled output never depends on which batch it lands in."""
    if item_params and item_params.get("seed") is not None:
        return int(item_params["seed"])  # type: ignore[call-overload]
    if job_seed is None:
        return None
    return derive_seed(job_seed, idx)


def build_requests(claim: Claim) -> list[GenRequest]:
    base = GenerationParams.model_validate(claim.job_params)
    return [
        GenRequest(
            key=it.idx,
            prompt=it.prompt,
            params=base.merged(it.params),
            seed=item_seed(base.seed, it.params, it.idx),
        )
        for it in claim.items
    ]


def to_new_result(r: GenResult, latency_ms: float) -> NewResult:
    if r.error is not None:
        return NewResult(
            idx=r.key,
            status=ResultStatus.FAILED,
            error_code=r.error.code,
            error_message=r.error.message,
            prompt_tokens=r.prompt_tokens or None,
            truncated=r.truncated,
            latency_ms=latency_ms,
        )
    many = len(r.outputs) > 1
    return NewResult(
        idx=r.key,
        status=ResultStatus.SUCCEEDED,
        output=r.outputs[0] if r.outputs else "",
        outputs=list(r.outputs) if many else None,
        finish_reason=r.finish_reasons[0] if r.finish_reasons else None,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        truncated=r.truncated,
        latency_ms=latency_ms,
    )


class _Heartbeat(threading.Thread):
    """Extends the lease every heartbeat interval; notices when the lease was lost.

    It is also the watchdog: a micro-batch that runs past `batch_timeout_seconds` means
    an item hangs the model. Heartbeats alone would keep that lease alive forever, so the
    process exits; the lease expires, the attempt counts, and the poison item is isolated
    (the supervisor starts a fresh process)."""

    def __init__(self, ctx: WorkerContext, claim: Claim) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{claim.task_id}")
        self.ctx, self.claim = ctx, claim
        self.done = threading.Event()
        self.lost = False
        self.job_stopped = False
        self.batch_started = time.monotonic()
        #: True while this task holds the model (the watchdog ignores a task waiting
        #: for its turn).
        self.generating = False

    def run(self) -> None:
        s = self.ctx.settings
        while not self.done.wait(s.heartbeat_seconds):
            if self.generating and time.monotonic() - self.batch_started > s.batch_timeout_seconds:
                log.error(
                    "task %s: a micro-batch ran over %.0fs (an item hangs the model); "
                    "exiting so the task is retried and the item isolated",
                    self.claim.task_id,
                    s.batch_timeout_seconds,
                )
                logging.shutdown()
                os._exit(70)
            try:
                if not leases.heartbeat(self.ctx.store, self.claim, s.lease_seconds):
                    self.lost = True
                    log.warning(
                        "task %s: lease lost; stopping after this batch", self.claim.task_id
                    )
                    return
                self.job_stopped = leases.job_stop_requested(self.ctx.store, self.claim.job_id)
            except Exception as exc:  # a DB hiccup: try again next beat
                log.warning("task %s: heartbeat failed: %s", self.claim.task_id, exc)


class _Writer(threading.Thread):
    """Writes micro-batch results in the background, retrying transient DB errors.

    Each write takes everything queued by then: results are stored as soon as the
    writer is free, and micro-batches that end faster than a write commits share one
    transaction."""

    def __init__(self, ctx: WorkerContext, claim: Claim) -> None:
        super().__init__(daemon=True, name=f"writer-{claim.task_id}")
        self.ctx, self.claim = ctx, claim
        self.inbox: queue.Queue[Sequence[NewResult] | None] = queue.Queue(maxsize=64)
        self.written = self.duplicates = 0
        self.error: BaseException | None = None

    def send(self, batch: Sequence[NewResult]) -> None:
        """Queue a micro-batch (the thread starts on first use: a task that fits one
        micro-batch writes everything with its finish and never needs it)."""
        if not self.is_alive():
            self.start()
        self.inbox.put(batch)

    def close(self) -> None:
        """Wait until everything queued is written."""
        if self.is_alive():
            self.inbox.put(None)
            self.join()

    def run(self) -> None:
        closing = False
        while not closing and (first := self.inbox.get()) is not None:
            batch = list(first)
            while True:  # and whatever else is already waiting
                try:
                    more = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                batch.extend(more)
            if self.error is not None:
                continue
            try:
                w, d = retry_transient(
                    lambda b=batch: write_results(self.ctx.store, self.claim, b),
                    what=f"writing results of task {self.claim.task_id}",
                    stop=self.ctx.stop,
                )
                self.written += w
                self.duplicates += d
            except BaseException as exc:
                self.error = exc


@dataclass
class _Running:
    """A claimed task on its way through the stages: prepared, generated, finished."""

    claim: Claim
    hb: _Heartbeat
    writer: _Writer
    requests: list[GenRequest]
    policy: BatchPolicy
    last_check: float = field(default_factory=time.monotonic)
    unwanted: bool = False
    outcome: str = "done"
    error: str | None = None
    held: list[NewResult] = field(default_factory=list)  # last micro-batch: written at finish
    #: Set when the model thread takes this task (see Pipeline._run_loop).
    started: threading.Event = field(default_factory=threading.Event)


def run_task(ctx: WorkerContext, task_id: int) -> str:
    """Run one task to the end (or until stopped). Returns what happened, for logs."""
    got = prepare(ctx, task_id)
    if isinstance(got, str):
        return got
    try:
        generate(ctx, got)
    finally:
        finish(ctx, got)
    return got.outcome


def prepare(ctx: WorkerContext, task_id: int, *, begin: bool = True) -> _Running | str:
    """Claim the task, start its heartbeat, and build its requests (no model needed).
    Without `begin` the claim only holds the task (see leases.claim_task); `generate`
    counts the attempt when it starts. A refused claim returns why (and re-sends tasks
    a poison split created)."""
    s = ctx.settings
    got = retry_transient(
        lambda: leases.claim_task(
            ctx.store,
            task_id,
            ctx.worker_id,
            lease_seconds=s.lease_seconds,
            max_attempts=s.max_attempts,
            begin=begin,
        ),
        what=f"claiming task {task_id}",
        stop=ctx.stop,
    )
    if isinstance(got, ClaimRefused):
        if got.new_tasks and ctx.send_tasks:
            ctx.send_tasks(list(got.new_tasks))
        _finalize(ctx, got.job_id)
        return got.reason
    hb = _Heartbeat(ctx, got)
    hb.start()
    run = _Running(
        claim=got,
        hb=hb,
        writer=_Writer(ctx, got),
        requests=[],
        policy=BatchPolicy(
            token_budget=s.token_budget,
            max_batch_size=s.max_batch_size,
            truncate=bool(got.job_options.get("truncate")),
        ),
    )
    try:
        run.requests = build_requests(got)
    except BaseException as exc:
        run.outcome, run.error = "error", f"{type(exc).__name__}: {exc}"
        finish(ctx, run)
        raise
    return run


def _should_stop(ctx: WorkerContext, run: _Running) -> bool:
    # The heartbeat notices a cancel, a deadline or a lost lease only every lease/3
    # seconds; asking SQL before each micro-batch (at most every STOP_CHECK_SECONDS)
    # keeps the promise that a task stops after the micro-batch in flight, instead of
    # generating results nobody will keep.
    if run.unwanted or ctx.stop.is_set() or run.hb.lost or run.hb.job_stopped:
        return True
    if run.writer.error is not None:
        return True
    if time.monotonic() - run.last_check < STOP_CHECK_SECONDS:
        return False
    run.last_check = time.monotonic()
    try:
        run.unwanted = not leases.claim_current(ctx.store, run.claim)
    except Exception as exc:  # a DB hiccup: the heartbeat keeps watching
        log.warning("task %s: stop check failed: %s", run.claim.task_id, exc)
    return run.unwanted


def generate(ctx: WorkerContext, run: _Running) -> None:
    """Generate every item (micro-batches, holding the model). A micro-batch's results
    go to the writer thread when the next one ends (see _Writer); the last ones wait
    for `finish` (one commit with the end of the task). Raises what the engine raised,
    with the outcome recorded."""
    hb = run.hb
    try:
        started = time.perf_counter()
        hb.batch_started = time.monotonic()
        hb.generating = True
        try:
            batches = generate_all(
                ctx.engine,
                run.requests,
                run.policy,
                should_stop=lambda: _should_stop(ctx, run),
            )
            for batch in batches:
                now = time.perf_counter()
                per_item = (now - started) * 1000 / max(1, len(batch))
                started = now
                if run.held:
                    run.writer.send(run.held)
                run.held = [to_new_result(r, per_item) for r in batch]
                hb.batch_started = time.monotonic()
        finally:
            hb.generating = False
        if _should_stop(ctx, run):
            run.outcome = "stopped"
    except BaseException as exc:
        run.outcome, run.error = "error", f"{type(exc).__name__}: {exc}"
        raise


def finish(ctx: WorkerContext, run: _Running, begin_next: _Running | None = None) -> bool | None:
    """Wait for the writer, then commit the last micro-batch with the end of the attempt
    (and of the job, if this was its last task). The lease is kept until then. With
    `begin_next`, that held task's attempt begins in the same commit; returns whether
    it did (False: its lease was lost while it waited)."""
    claim = run.claim
    try:
        run.writer.close()
        if run.writer.error is not None:
            run.outcome, run.error = "error", f"writing results failed: {run.writer.error}"
        info = ctx.engine.info
        done = retry_transient(
            lambda: complete_task(
                ctx.store,
                claim,
                run.held,
                outcome=run.outcome,
                engine=info.engine,
                model_revision=info.revision,
                error=run.error,
                begin_next=begin_next.claim if begin_next is not None else None,
            ),
            what=f"finishing task {claim.task_id}",
            stop=None,
        )
    finally:
        run.hb.done.set()
        run.hb.join(timeout=5)
    if done.task_state == "queued" and ctx.send_tasks:
        try:
            ctx.send_tasks([claim.task_id])  # released early: let another worker continue it
        except Exception as exc:  # committed already; the reconciler sends it later
            log.warning("task %s: re-sending it failed: %s", claim.task_id, exc)
    return done.began_next


class Pipeline:
    """Runs tasks one stage apart: while the model generates task N, the Celery thread
    claims and prepares task N+1 (prefetch one task). Only one task ever waits.

    `submit` returns once the model thread took the task it was given, so the broker
    message of the next task is fetched, and that task claimed, while this one
    generates. The SQL lease, not the broker message, keeps an accepted task safe: if
    the process dies, the lease expires and the task is re-queued.

    A prefetched task is only held: its attempt begins in the transaction that
    completes the task before it, so a task is fully recorded before the next one's
    work starts, and a task that only waited is never charged an attempt when a poison
    item kills the worker."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._waiting: queue.Queue[_Running | None] = queue.Queue(maxsize=1)
        self._busy = threading.Event()  # the model thread has a task (any stage)
        self._model = threading.Thread(target=self._loop, name="model", daemon=True)
        self._model.start()

    def submit(self, task_id: int) -> str:
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
        prev: _Running | None = None  # generated, not yet completed
        while True:
            if prev is None:
                self._busy.clear()
                run = self._waiting.get()
            else:
                try:
                    run = self._waiting.get_nowait()
                except queue.Empty:
                    self._finish(prev, None)  # nothing waits: complete it alone
                    prev = None
                    continue
            if run is None:
                if prev is not None:
                    self._finish(prev, None)
                return
            stopping = self.ctx.stop.is_set()  # shutting down: release it untouched
            start = None if run.claim.begun or stopping else run
            if prev is not None:  # complete it, and begin this one, in one commit
                began = self._finish(prev, start)
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

    def _finish(self, run: _Running, begin_next: _Running | None) -> bool | None:
        try:
            return finish(self.ctx, run, begin_next)
        except Exception:
            # Could not record the end (database down for long): the lease expires and
            # the reconciler re-queues the task.
            log.exception("finishing task %s failed", run.claim.task_id)
            return False if begin_next is not None else None

    def _begin(self, run: _Running) -> bool:
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
        self._model.join(timeout)


def _finalize(ctx: WorkerContext, job_id: str | None) -> None:
    if job_id is None:
        return
    try:
        jobs.finalize_job(ctx.store, job_id)
    except Exception as exc:  # the reconciler will finalise it
        log.warning("finalising job %s failed: %s", job_id, exc)
