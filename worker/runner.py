"""Running one task: claim its lease, generate in micro-batches, write results, finish.

A plain function over a `WorkerContext`; the Celery task is a thin adapter around it and
tests call it directly. While the model generates, a heartbeat thread keeps the lease and
a writer thread stores the previous micro-batch's results, so the model rarely waits on
SQL. Results are written idempotently, so a task run twice stores each item once.
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

    def run(self) -> None:
        s = self.ctx.settings
        while not self.done.wait(s.heartbeat_seconds):
            if time.monotonic() - self.batch_started > s.batch_timeout_seconds:
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
    """Writes micro-batch results in the background, retrying transient DB errors."""

    def __init__(self, ctx: WorkerContext, claim: Claim) -> None:
        super().__init__(daemon=True, name=f"writer-{claim.task_id}")
        self.ctx, self.claim = ctx, claim
        self.inbox: queue.Queue[Sequence[NewResult] | None] = queue.Queue(maxsize=4)
        self.written = self.duplicates = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        while (batch := self.inbox.get()) is not None:
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


def run_task(ctx: WorkerContext, task_id: int) -> str:
    """Run one task to the end (or until stopped). Returns what happened, for logs."""
    s = ctx.settings
    got = retry_transient(
        lambda: leases.claim_task(
            ctx.store,
            task_id,
            ctx.worker_id,
            lease_seconds=s.lease_seconds,
            max_attempts=s.max_attempts,
        ),
        what=f"claiming task {task_id}",
        stop=ctx.stop,
    )
    if isinstance(got, ClaimRefused):
        if got.new_tasks and ctx.send_tasks:
            ctx.send_tasks(list(got.new_tasks))
        _finalize(ctx, got.job_id)
        return got.reason
    claim = got
    hb = _Heartbeat(ctx, claim)
    writer = _Writer(ctx, claim)
    hb.start()
    writer.start()
    error: str | None = None
    outcome = "done"
    try:
        policy = BatchPolicy(
            token_budget=s.token_budget,
            max_batch_size=s.max_batch_size,
            truncate=bool(claim.job_options.get("truncate")),
        )

        # The heartbeat notices a cancel, a deadline or a lost lease only every
        # lease/3 seconds; asking SQL before each micro-batch (at most every
        # STOP_CHECK_SECONDS) keeps the promise that a task stops after the
        # micro-batch in flight, instead of generating results nobody will keep.
        last_check = time.monotonic()
        unwanted = False

        def should_stop() -> bool:
            nonlocal last_check, unwanted
            if unwanted or ctx.stop.is_set() or hb.lost or hb.job_stopped:
                return True
            if writer.error is not None:
                return True
            if time.monotonic() - last_check < STOP_CHECK_SECONDS:
                return False
            last_check = time.monotonic()
            try:
                unwanted = not leases.claim_current(ctx.store, claim)
            except Exception as exc:  # a DB hiccup: the heartbeat keeps watching
                log.warning("task %s: stop check failed: %s", claim.task_id, exc)
            return unwanted

        started = time.perf_counter()
        hb.batch_started = time.monotonic()
        for batch in generate_all(
            ctx.engine, build_requests(claim), policy, should_stop=should_stop
        ):
            now = time.perf_counter()
            per_item = (now - started) * 1000 / max(1, len(batch))
            started = now
            writer.inbox.put([to_new_result(r, per_item) for r in batch])
            hb.batch_started = time.monotonic()
        if should_stop():
            outcome = "stopped"
    except BaseException as exc:
        outcome, error = "error", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        writer.inbox.put(None)
        writer.join()
        hb.done.set()
        hb.join(timeout=5)
        if writer.error is not None:
            outcome, error = "error", f"writing results failed: {writer.error}"
        info = ctx.engine.info
        state = retry_transient(
            lambda: leases.finish_task(
                ctx.store,
                claim,
                outcome=outcome,
                engine=info.engine,
                model_revision=info.revision,
                error=error,
            ),
            what=f"finishing task {task_id}",
            stop=None,
        )
        if state == "queued" and ctx.send_tasks:
            ctx.send_tasks([task_id])  # released early: let another worker continue it
        _finalize(ctx, claim.job_id)
    return outcome


def _finalize(ctx: WorkerContext, job_id: str | None) -> None:
    if job_id is None:
        return
    try:
        jobs.finalize_job(ctx.store, job_id)
    except Exception as exc:  # the reconciler will finalise it
        log.warning("finalising job %s failed: %s", job_id, exc)
