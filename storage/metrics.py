"""What /metrics reports, read from SQL at scrape time.

Every figure is derived from the rows every process writes (jobs, tasks, results,
attempts, workers' heartbeats, the webhook outbox), never from counters kept in one
process's memory: any API process on any host reports the same numbers for the whole
deployment, and a restart loses nothing. The price is a few aggregate queries per
scrape; those over `results` read only the rows of jobs still running, plus each final
job's once per process (`FinishedJobs`: its figures no longer change). See README,
"Metrics".

Micro-batch latency comes from the results too: a worker stores each item of a
micro-batch with the same `latency_ms` (the batch's time divided by its size), under its
task and attempt, so (job, task, attempt, latency_ms) groups the items of one
micro-batch and latency_ms x rows is its duration.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session

from genqueue.storage.db import Store, utcnow
from genqueue.storage.models import (
    FINAL_JOB_STATES,
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


@dataclass
class JobFigures:
    """One job's share of the result-derived figures."""

    items: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(BATCH_BUCKETS))
    batches: int = 0
    seconds: float = 0.0


class FinishedJobs:
    """The figures of final jobs, which no longer change: each is read from `results`
    once per process (and again when the job ends anew, after a retry: its
    `finished_at` differs), so a scrape reads the results of running jobs only. Still
    SQL-derived: a cache of what SQL said, keyed by what would change it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_job: dict[str, tuple[datetime | None, JobFigures]] = {}

    def get(self, job_id: str, finished_at: datetime | None) -> JobFigures | None:
        with self._lock:
            found = self._by_job.get(job_id)
        return found[1] if found is not None and found[0] == finished_at else None

    def keep(self, figures: dict[str, tuple[datetime | None, JobFigures]]) -> None:
        """Remember these, and forget jobs not among `figures` or already kept."""
        with self._lock:
            self._by_job = figures


#: Job ids per `IN (...)` query.
_CHUNK = 500


def snapshot(store: Store, *, live_within: float, finished: FinishedJobs | None = None) -> Snapshot:
    """Every figure, in one read transaction. Workers count as live when their last
    heartbeat is younger than `live_within` seconds. With `finished`, final jobs'
    figures are read once and kept there."""
    out = Snapshot()
    with store.read() as s:
        for state, n in s.execute(select(Job.state, func.count()).group_by(Job.state)):
            out.jobs[state] = int(n)

        jobs = s.execute(
            select(Job.id, Job.model, Job.state, Job.finished_at, Job.total_items)
            .where(Job.state != JobState.SUBMITTING.value)
            .order_by(Job.id)  # the same float sums in the same order on every scrape
        ).all()
        kept: dict[str, tuple[datetime | None, JobFigures]] = {}
        figures: dict[str, JobFigures] = {}
        todo: list[str] = []
        for job in jobs:
            cached = finished.get(job.id, job.finished_at) if finished else None
            if cached is not None:
                figures[job.id] = cached
            else:
                todo.append(job.id)
        for i in range(0, len(todo), _CHUNK):
            figures.update(_job_figures(s, todo[i : i + _CHUNK]))
        for job in jobs:
            fig = figures[job.id]
            if job.state in FINAL_JOB_STATES:
                kept[job.id] = (job.finished_at, fig)
            model = job.model
            stored = 0
            for status, n in fig.items.items():
                out.items[(model, status)] = out.items.get((model, status), 0) + n
                stored += n
            pending = out.items.get((model, "pending"), 0)
            out.items[(model, "pending")] = pending + max(0, job.total_items - stored)
            p, c = out.tokens.get(model, (0, 0))
            out.tokens[model] = (p + fig.prompt_tokens, c + fig.generated_tokens)
            if fig.batches:
                h = out.batch_latency.get(model)
                out.batch_latency[model] = Histogram(
                    [a + b for a, b in zip(h.buckets, fig.buckets, strict=True)]
                    if h
                    else list(fig.buckets),
                    (h.count if h else 0) + fig.batches,
                    (h.sum_seconds if h else 0.0) + fig.seconds,
                )
        if finished is not None:
            finished.keep(kept)

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


def _job_figures(s: Session, ids: list[str]) -> dict[str, JobFigures]:
    """The result-derived figures of these jobs (two grouped reads of `results`, by
    its primary key's leading column)."""
    out = {job_id: JobFigures() for job_id in ids}
    for job_id, status, n, prompt, completion in s.execute(
        select(
            Result.job_id,
            Result.status,
            func.count(),
            func.coalesce(func.sum(Result.prompt_tokens), 0),
            func.coalesce(func.sum(Result.completion_tokens), 0),
        )
        .where(Result.job_id.in_(ids))
        .group_by(Result.job_id, Result.status)
    ):
        fig = out[job_id]
        fig.items[status] = int(n)
        fig.prompt_tokens += int(prompt)
        fig.generated_tokens += int(completion)
    batches = (
        select(
            Result.job_id,
            (func.max(Result.latency_ms) * func.count() / 1000.0).label("seconds"),
        )
        .where(Result.job_id.in_(ids), Result.latency_ms.is_not(None))
        .group_by(Result.job_id, Result.task_id, Result.attempt, Result.latency_ms)
        .subquery()
    )
    columns = [func.sum(case((batches.c.seconds <= bound, 1), else_=0)) for bound in BATCH_BUCKETS]
    for job_id, n, total, *buckets in s.execute(
        select(batches.c.job_id, func.count(), func.sum(batches.c.seconds), *columns).group_by(
            batches.c.job_id
        )
    ):
        fig = out[job_id]
        fig.batches, fig.seconds = int(n), float(total or 0.0)
        fig.buckets = [int(b or 0) for b in buckets]
    return out
