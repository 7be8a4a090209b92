"""A job as users see it: its row and live counts, rendered once for every view."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from genqueue.storage.db import Store, as_utc
from genqueue.storage.errors import JobNotFound
from genqueue.storage.models import Job, JobState, Result, ResultStatus, Task, TaskState


@dataclass(frozen=True)
class JobCounts:
    total: int
    succeeded: int
    failed: int
    running: int
    pending: int
    cancelled: int = 0
    expired: int = 0

    @property
    def done(self) -> int:
        """Items with a final result, whatever it is."""
        return self.succeeded + self.failed + self.cancelled + self.expired

    @classmethod
    def from_dict(cls, counts: dict[str, int]) -> JobCounts:
        """The counts of a status dict (`JobView.to_dict()["counts"]`)."""
        return cls(**counts)

    def to_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "running": self.running,
            "pending": self.pending,
            "cancelled": self.cancelled,
            "expired": self.expired,
        }


@dataclass(frozen=True)
class JobView:
    """A job as users see it: its row plus live counts."""

    job: Job
    counts: JobCounts

    def to_dict(self) -> dict[str, Any]:
        j = self.job

        def ts(value: datetime | None) -> str | None:
            value = as_utc(value)
            return value.isoformat() if value else None

        return {
            "job_id": j.id,
            "state": j.state,
            "kind": j.kind,
            "model": j.model,
            "revision": j.revision,
            "engine": j.engine,
            "priority": j.priority,
            "chunk_size": j.chunk_size,
            "params": j.params,
            "template": j.template,
            "defaults": dict((j.options or {}).get("defaults") or {}),
            # Whether prompts went through a chat template, and whose (the job's own or
            # the model's).
            "chat": bool((j.options or {}).get("chat")),
            "chat_template": "job" if j.chat_template else None,
            "batch_id": j.batch_id,
            "tenant": j.tenant,
            "metadata": j.meta,
            "input": j.input_name,
            "counts": self.counts.to_dict(),
            "duplicate_executions": j.duplicate_executions,
            "reused": j.reused or 0,
            "error": j.error,
            "created_at": ts(j.created_at),
            "started_at": ts(j.started_at),
            "finished_at": ts(j.finished_at),
            "deadline_at": ts(j.deadline_at),
        }


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def job_counts(session: Session, job: Job) -> JobCounts:
    """Live counts from the tasks' counters (and, once a job was cancelled or expired,
    the results that say so)."""
    row = session.execute(
        select(
            func.coalesce(func.sum(Task.n_succeeded), 0),
            func.coalesce(func.sum(Task.n_failed), 0),
        ).where(Task.job_id == job.id)
    ).one()
    succeeded, failed = int(row[0]), int(row[1])
    running = int(
        session.scalar(
            select(
                func.coalesce(func.sum(Task.n_items - Task.n_succeeded - Task.n_failed), 0)
            ).where(Task.job_id == job.id, Task.state == TaskState.RUNNING.value)
        )
        or 0
    )
    cancelled = expired = 0
    if job.state in (JobState.CANCELLED.value, JobState.EXPIRED.value) or job.cancel_requested:
        by_status: dict[str, int] = dict(
            session.execute(
                select(Result.status, func.count())
                .where(
                    Result.job_id == job.id,
                    Result.status.in_([ResultStatus.CANCELLED.value, ResultStatus.EXPIRED.value]),
                )
                .group_by(Result.status)
            )
            .tuples()
            .all()
        )
        cancelled = int(by_status.get(ResultStatus.CANCELLED.value, 0))
        expired = int(by_status.get(ResultStatus.EXPIRED.value, 0))
    pending = max(0, job.total_items - succeeded - failed - running - cancelled - expired)
    return JobCounts(job.total_items, succeeded, failed, running, pending, cancelled, expired)


def view_job(store: Store, job_id: str) -> JobView:
    with store.read() as s:
        job = get_job(s, job_id)
        return JobView(job, job_counts(s, job))


def list_jobs(
    store: Store,
    limit: int = 50,
    state: str | None = None,
    *,
    tenant: str | None = None,
    after: str | None = None,
) -> list[JobView]:
    """The newest jobs first (never those still being submitted); only `tenant`'s when
    given, and only those older than job `after` (the last of the page before)."""
    with store.read() as s:
        q = (
            select(Job)
            .where(Job.state != JobState.SUBMITTING.value)
            .order_by(Job.created_at.desc(), Job.id.desc())
            .limit(limit)
        )
        if state:
            q = q.where(Job.state == state)
        if tenant is not None:
            q = q.where(Job.tenant == tenant)
        if after:
            q = q.where(older_than(s, Job, after, tenant, JobNotFound))
        return [JobView(j, job_counts(s, j)) for j in s.scalars(q).all()]


def older_than(
    s: Session, model: Any, after: str, tenant: str | None, missing: type[Exception]
) -> Any:
    """The cursor of a newest-first page (jobs, batches): the rows after row `after`,
    the last of the page before, by (created_at, id). A row that does not exist, or is
    another tenant's, raises `missing(after)`."""
    mark = s.get(model, after)
    if mark is None or (tenant is not None and mark.tenant != tenant):
        raise missing(after)
    return (model.created_at < mark.created_at) | (
        (model.created_at == mark.created_at) & (model.id < mark.id)
    )


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def token_usage(store: Store, job_ids: list[str]) -> TokenUsage:
    """Tokens used by these jobs' results so far (prompt and generated)."""
    if not job_ids:
        return TokenUsage(0, 0)
    with store.read() as s:
        row = s.execute(
            select(
                func.coalesce(func.sum(Result.prompt_tokens), 0),
                func.coalesce(func.sum(Result.completion_tokens), 0),
            ).where(Result.job_id.in_(job_ids))
        ).one()
    return TokenUsage(int(row[0]), int(row[1]))


@dataclass(frozen=True)
class TenantLoad:
    """What a tenant has in flight: unfinished jobs, and their items without a result."""

    live_jobs: int
    open_items: int


def tenant_load(store: Store, tenant: str) -> TenantLoad:
    live = (JobState.SUBMITTING.value, JobState.QUEUED.value, JobState.RUNNING.value)
    with store.read() as s:
        jobs, items = s.execute(
            select(func.count(), func.coalesce(func.sum(Job.total_items), 0)).where(
                Job.tenant == tenant, Job.state.in_(live)
            )
        ).one()
        done = s.scalar(
            select(func.coalesce(func.sum(Task.n_succeeded + Task.n_failed), 0))
            .join(Job, Job.id == Task.job_id)
            .where(Job.tenant == tenant, Job.state.in_(live))
        )
    return TenantLoad(int(jobs), max(0, int(items) - int(done or 0)))
