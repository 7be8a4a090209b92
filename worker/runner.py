"""Running one task: claim its lease, generate in micro-batches, write results, complete.

Plain functions over a `WorkerContext`; the Celery task is a thin adapter around them
and tests call them directly. While the model generates, a heartbeat thread keeps the
lease (heartbeat.py) and a writer thread stores the previous micro-batch's results
(writer.py), so the model rarely waits on SQL. The last micro-batch, the end of the
attempt and (for a job's last task) the job's final state commit in one transaction
(storage/completion.py). Results are written idempotently, so a task run twice stores
each item once.

A worker process with prefetch runs tasks through a `Pipeline` (pipeline.py), which
claims and prepares the next task while this one generates. Only its model thread (or
`run_task`, without prefetch) ever calls the engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from genqueue.settings import Settings
from genqueue.storage import leases, lifecycle
from genqueue.storage.claims import Claim, ClaimRefused
from genqueue.storage.completion import complete_task
from genqueue.storage.db import Store
from genqueue.storage.models import ResultStatus
from genqueue.storage.results import NewResult
from genqueue.worker.batching import BatchPolicy, for_engine, generate_all
from genqueue.worker.engines.base import Engine, GenRequest
from genqueue.worker.heartbeat import Heartbeat
from genqueue.worker.requests import build_requests, to_new_result
from genqueue.worker.reuse import reuse_keys, take_reusable
from genqueue.worker.transient import retry_transient
from genqueue.worker.writer import Writer

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
    send_tasks: Callable[[list[int]], object] | None = None
    #: Set on graceful shutdown: the task stops after its in-flight micro-batch.
    stop: threading.Event = field(default_factory=threading.Event)
    #: Whether the operator started this worker with --trust-remote-code (its model may
    #: run code from the model's repository).
    trust_remote_code: bool = False


def remote_code_refusal(ctx: WorkerContext, claim: Claim) -> str | None:
    """Why this worker must not run the claimed job, or None. A job can never make a
    worker run code its operator did not allow, and a worker that runs such code runs
    only jobs that asked for it."""
    asked = bool(claim.job_options.get("trust_remote_code"))
    if asked and not ctx.trust_remote_code:
        return (
            f"the job asks for trust_remote_code, but worker {ctx.worker_id} was started "
            "without --trust-remote-code, so it does not run model code from the model's "
            "repository; start its workers with `genqueue worker --trust-remote-code`, "
            "then `genqueue retry` the job"
        )
    if ctx.trust_remote_code and not asked:
        return (
            f"worker {ctx.worker_id} runs model code from the model's repository "
            "(started with --trust-remote-code) and this job did not allow it; submit "
            "with --trust-remote-code, or serve the model with workers started without it"
        )
    return None


def _refuse(ctx: WorkerContext, claim: Claim, why: str) -> None:
    """Fail every item of a claimed task with `remote_code_refused` and complete it."""
    results = [
        NewResult(
            idx=it.idx,
            status=ResultStatus.FAILED,
            error_code="remote_code_refused",
            error_message=why,
        )
        for it in claim.items
    ]
    info = ctx.engine.info
    retry_transient(
        lambda: complete_task(
            ctx.store,
            claim,
            results,
            outcome="refused",
            engine=info.engine,
            model_revision=info.revision,
            error=why,
        ),
        what=f"refusing task {claim.task_id}",
        stop=None,
    )


@dataclass
class Running:
    """A claimed task on its way through the stages: prepared, generated, finished."""

    claim: Claim
    hb: Heartbeat
    writer: Writer
    requests: list[GenRequest]
    policy: BatchPolicy
    last_check: float = field(default_factory=time.monotonic)
    unwanted: bool = False
    outcome: str = "done"
    error: str | None = None
    held: list[NewResult] = field(default_factory=list)  # last micro-batch: written at finish
    #: Each request's reuse key (worker/reuse.py), stored with its result.
    keys: dict[int, str | None] = field(default_factory=dict)
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
        complete(ctx, got)
    return got.outcome


def prepare(ctx: WorkerContext, task_id: int, *, begin: bool = True) -> Running | str:
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
    refusal = remote_code_refusal(ctx, got)
    if refusal is not None:
        _refuse(ctx, got, refusal)
        return "refused"
    hb = Heartbeat(ctx, got)
    hb.start()
    run = Running(
        claim=got,
        hb=hb,
        writer=Writer(ctx, got),
        requests=[],
        policy=for_engine(
            BatchPolicy(
                token_budget=s.token_budget,
                max_batch_size=s.max_batch_size,
                truncate=bool(got.job_options.get("truncate")),
                max_prompt_chars=s.max_prompt_chars,
            ),
            ctx.engine,
        ),
    )
    try:
        run.requests = build_requests(got)
        run.keys = reuse_keys(
            run.requests,
            ctx.engine.info,
            truncate=run.policy.truncate,
            max_prompt_chars=run.policy.max_prompt_chars,
        )
        if got.job_options.get("reuse"):
            # Copies go out with the first micro-batch (or at the end, when every item
            # was reused), in this attempt's writes like any result.
            run.requests, run.held = retry_transient(
                lambda: take_reusable(ctx.store, got, run.requests, run.keys),
                what=f"looking up reusable results for task {task_id}",
                stop=ctx.stop,
            )
    except BaseException as exc:
        run.outcome, run.error = "error", f"{type(exc).__name__}: {exc}"
        complete(ctx, run)
        raise
    return run


def _should_stop(ctx: WorkerContext, run: Running) -> bool:
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


def generate(ctx: WorkerContext, run: Running) -> None:
    """Generate every item (micro-batches, holding the model). A micro-batch's results
    go to the writer thread when the next one ends (see Writer); the last ones wait
    for `complete` (one commit with the end of the task). Raises what the engine raised,
    with the outcome recorded."""
    generate_together(ctx, [run])


def generate_together(ctx: WorkerContext, runs: Sequence[Running]) -> None:
    """`generate` for several begun tasks at once, their items sharing engine calls:
    an engine that batches continuously (vLLM) runs fastest on calls of hundreds of
    requests, more than one task holds (see Pipeline). Every task keeps its own
    results, writer and outcome; the calls stop early only when every task should
    stop. The tasks share one `BatchPolicy`."""
    if not runs:
        return
    # Keys are unique within a task only (an item's index in its job): number the
    # requests afresh, and map each result back to its task and index.
    owner: list[tuple[Running, int]] = []
    requests: list[GenRequest] = []
    for run in runs:
        for q in run.requests:
            owner.append((run, q.key))
            requests.append(replace(q, key=len(requests)) if len(runs) > 1 else q)
    params = {(id(run), q.key): q.params for run in runs for q in run.requests}
    try:
        started = time.perf_counter()
        for run in runs:
            run.hb.batch_started = time.monotonic()
            run.hb.generating = True
        try:
            batches = generate_all(
                ctx.engine,
                requests,
                runs[0].policy,
                should_stop=lambda: all(_should_stop(ctx, run) for run in runs),
            )
            for batch in batches:
                now = time.perf_counter()
                per_item = (now - started) * 1000 / max(1, len(batch))
                started = now
                mine: dict[int, list[NewResult]] = {}
                for r in batch:
                    run, key = owner[r.key] if len(runs) > 1 else (runs[0], r.key)
                    r.key = key
                    mine.setdefault(id(run), []).append(
                        to_new_result(r, per_item, params.get((id(run), key)), run.keys.get(key))
                    )
                for run in runs:
                    if id(run) not in mine:
                        continue
                    if run.held:
                        run.writer.send(run.held)
                    run.held = mine[id(run)]
                    run.hb.batch_started = time.monotonic()
        finally:
            for run in runs:
                run.hb.generating = False
        for run in runs:
            if _should_stop(ctx, run):
                run.outcome = "stopped"
    except BaseException as exc:
        for run in runs:
            run.outcome, run.error = "error", f"{type(exc).__name__}: {exc}"
        raise


def complete(ctx: WorkerContext, run: Running, begin_next: Running | None = None) -> bool | None:
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


def _finalize(ctx: WorkerContext, job_id: str | None) -> None:
    if job_id is None:
        return
    try:
        lifecycle.finalize_job(ctx.store, job_id)
    except Exception as exc:  # the reconciler will finalise it
        log.warning("finalising job %s failed: %s", job_id, exc)
