"""What /metrics reports, read from SQL at scrape time.

Every figure is derived from the rows every process writes (jobs, tasks, results,
attempts, workers' heartbeats, the webhook outbox), never from counters kept in one
process's memory: any API process on any host reports the same numbers for the whole
deployment, and a restart loses nothing. The price is a few aggregate queries per
scrape, two of them over `results` (see README, "Metrics").

Micro-batch latency comes from the results too: a worker stores each item of a
micro-batch with the same `latency_ms` (the batch's time divided by its size), under its
task and attempt, so (job, task, attempt, latency_ms) groups the items of one
micro-batch and latency_ms x rows is its duration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session

from genqueue.storage.db import Store, utcnow
from genqueue.storage.models import (
    OPEN_TASK_STATES,
    Attempt,
    Job,
    JobState,
    Result,
    Task,
    TaskState,
    WebhookDelivery,
    WebhookEvent,
    WorkerRow,
)

#: Histogram buckets (seconds) of micro-batch durations.
BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_WAITING = (TaskState.PENDING.value, TaskState.QUEUED.value)


@dataclass(frozen=True)
class Histogram:
    #: Cumulative counts, one per BATCH_BUCKETS bound.
    buckets: list[int]
    count: int
    sum_seconds: float


@dataclass
class Snapshot:
    jobs: dict[str, int] = field(default_factory=dict)
    #: (model, status) -> items; status "pending" for items without a result yet.
    items: dict[tuple[str, str], int] = field(default_factory=dict)
    #: model -> (prompt tokens, generated tokens)
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: (queue, model) -> (tasks waiting, items waiting, tasks running)
    queues: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    #: (queue, model) -> live worker processes
    workers: dict[tuple[str, str], int] = field(default_factory=dict)
    lease_expiries: int = 0
    requeues: int = 0
    duplicate_executions: int = 0
    batch_latency: dict[str, Histogram] = field(default_factory=dict)
    #: outcome (delivered, http_error, no_response) -> attempts
    webhook_deliveries: dict[str, int] = field(default_factory=dict)
    #: state (pending, delivered, failed) -> events
    webhook_events: dict[str, int] = field(default_factory=dict)


def snapshot(store: Store, *, live_within: float) -> Snapshot:
    """Every figure, in one read transaction. Workers count as live when their last
    heartbeat is younger than `live_within` seconds."""
    out = Snapshot()
    with store.read() as s:
        for state, n in s.execute(select(Job.state, func.count()).group_by(Job.state)):
            out.jobs[state] = int(n)

        visible = Job.state != JobState.SUBMITTING.value
        per_model = s.execute(
            select(
                Job.model,
                Result.status,
                func.count(),
                func.coalesce(func.sum(Result.prompt_tokens), 0),
                func.coalesce(func.sum(Result.completion_tokens), 0),
            )
            .select_from(Result)
            .join(Job, Job.id == Result.job_id)
            .where(visible)
            .group_by(Job.model, Result.status)
        )
        stored: dict[str, int] = {}
        for model, status, n, prompt, completion in per_model:
            out.items[(model, status)] = int(n)
            stored[model] = stored.get(model, 0) + int(n)
            p, c = out.tokens.get(model, (0, 0))
            out.tokens[model] = (p + int(prompt), c + int(completion))
        totals = s.execute(
            select(Job.model, func.coalesce(func.sum(Job.total_items), 0))
            .where(visible)
            .group_by(Job.model)
        )
        for model, total in totals:
            out.items[(model, "pending")] = max(0, int(total) - stored.get(model, 0))

        waiting = case((Task.state.in_(_WAITING), 1), else_=0)
        for queue, model, tasks, items, running in s.execute(
            select(
                Job.queue,
                Job.model,
                func.sum(waiting),
                func.sum(waiting * Task.n_items),
                func.sum(case((Task.state == TaskState.RUNNING.value, 1), else_=0)),
            )
            .select_from(Task)
            .join(Job, Job.id == Task.job_id)
            .where(Task.state.in_(OPEN_TASK_STATES))
            .group_by(Job.queue, Job.model)
        ):
            out.queues[(queue, model)] = (int(tasks or 0), int(items or 0), int(running or 0))

        since = utcnow() - timedelta(seconds=live_within)
        for queue, model, n in s.execute(
            select(WorkerRow.queue, WorkerRow.model, func.count())
            .where(WorkerRow.seen_at >= since)
            .group_by(WorkerRow.queue, WorkerRow.model)
        ):
            out.workers[(queue, model)] = int(n)

        out.lease_expiries = int(
            s.scalar(select(func.count()).where(Attempt.outcome == "lease_expired")) or 0
        )
        out.requeues = int(
            s.scalar(select(func.count()).where(Attempt.number > 1, Attempt.began_at.is_not(None)))
            or 0
        )
        out.duplicate_executions = int(
            s.scalar(select(func.coalesce(func.sum(Job.duplicate_executions), 0))) or 0
        )
        out.batch_latency = _batch_latency(s)

        outcome = case(
            (WebhookDelivery.status_code.between(200, 299), literal("delivered")),
            (WebhookDelivery.status_code.is_not(None), literal("http_error")),
            else_=literal("no_response"),
        )
        for name, n in s.execute(
            select(outcome, func.count()).select_from(WebhookDelivery).group_by(outcome)
        ):
            out.webhook_deliveries[str(name)] = int(n)
        for state, n in s.execute(
            select(WebhookEvent.state, func.count()).group_by(WebhookEvent.state)
        ):
            out.webhook_events[state] = int(n)
    return out


def _batch_latency(s: Session) -> dict[str, Histogram]:
    batches = (
        select(
            Result.job_id,
            (func.max(Result.latency_ms) * func.count() / 1000.0).label("seconds"),
        )
        .where(Result.latency_ms.is_not(None))
        .group_by(Result.job_id, Result.task_id, Result.attempt, Result.latency_ms)
        .subquery()
    )
    columns = [func.sum(case((batches.c.seconds <= bound, 1), else_=0)) for bound in BATCH_BUCKETS]
    rows = s.execute(
        select(Job.model, func.count(), func.sum(batches.c.seconds), *columns)
        .select_from(batches)
        .join(Job, Job.id == batches.c.job_id)
        .group_by(Job.model)
    )
    return {
        model: Histogram([int(b or 0) for b in buckets], int(n), float(total or 0.0))
        for model, n, total, *buckets in rows
    }
