"""A batch as users see it: the jobs one input became, with their counts summed and one
state for the whole."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from genqueue.storage.db import Store, as_utc, utcnow
from genqueue.storage.errors import BatchNotFound
from genqueue.storage.models import FINAL_JOB_STATES, Batch, Job, JobState
from genqueue.storage.status import JobCounts, JobView, job_counts, older_than

#: genqueue's final batch states and the OpenAI Batch status of each (the one mapping:
#: the OpenAI API's statuses and the `batch.*` webhook events are derived from it).
OPENAI_FINAL_STATUS = {
    JobState.COMPLETED.value: "completed",
    JobState.COMPLETED_WITH_ERRORS.value: "completed",
    JobState.FAILED.value: "completed",  # the batch ran; each line has its error
    JobState.CANCELLED.value: "cancelled",
    JobState.EXPIRED.value: "expired",
}


def batch_state(states: list[str]) -> str:
    """One state for a batch's jobs: queued until one starts, running until all end;
    then cancelled or expired if any job was, failed if all failed, completed if all
    completed, else completed_with_errors."""
    if not states or JobState.SUBMITTING.value in states:
        return JobState.SUBMITTING.value
    if any(s not in FINAL_JOB_STATES for s in states):
        queued = all(s == JobState.QUEUED.value for s in states)
        return JobState.QUEUED.value if queued else JobState.RUNNING.value
    for state in (JobState.CANCELLED.value, JobState.EXPIRED.value):
        if state in states:
            return state
    for state in (JobState.FAILED.value, JobState.COMPLETED.value):
        if all(s == state for s in states):
            return state
    return JobState.COMPLETED_WITH_ERRORS.value


@dataclass(frozen=True)
class BatchView:
    batch: Batch
    jobs: list[JobView]

    @property
    def state(self) -> str:
        return batch_state([v.job.state for v in self.jobs])

    @property
    def counts(self) -> JobCounts:
        totals = [sum(getattr(v.counts, f) for v in self.jobs) for f in _COUNT_FIELDS]
        return JobCounts(*totals)

    def to_dict(self) -> dict[str, Any]:
        jobs = [v.to_dict() for v in self.jobs]

        def stamp(key: str, pick: Any) -> str | None:
            values = [j[key] for j in jobs if j[key] is not None]
            if not values or (key == "finished_at" and len(values) < len(jobs)):
                return None
            return str(pick(values))

        created = as_utc(self.batch.created_at)
        return {
            "batch_id": self.batch.id,
            "state": self.state,
            "models": [j["model"] for j in jobs],
            "counts": self.counts.to_dict(),
            "duplicate_executions": sum(j["duplicate_executions"] for j in jobs),
            "reused": sum(j["reused"] for j in jobs),
            "metadata": self.batch.meta,
            "input": self.batch.input_name,
            "created_at": created.isoformat() if created else None,
            "started_at": stamp("started_at", min),
            "finished_at": stamp("finished_at", max),
            "jobs": jobs,
        }


_COUNT_FIELDS = ("total", "succeeded", "failed", "running", "pending", "cancelled", "expired")


def batch_jobs(store: Store, batch_id: str) -> list[Job]:
    """A batch's jobs, oldest first (raises BatchNotFound)."""
    with store.read() as s:
        if s.get(Batch, batch_id) is None:
            raise BatchNotFound(batch_id)
        return list(s.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.created_at)))


def view_batch(store: Store, batch_id: str) -> BatchView:
    with store.read() as s:
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise BatchNotFound(batch_id)
        jobs = s.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.created_at))
        return BatchView(batch, [JobView(j, job_counts(s, j)) for j in jobs])


def delete_batch(store: Store, batch_id: str) -> None:
    """Remove a batch row (its jobs are removed one by one first, see lifecycle)."""
    with store.session() as s:
        batch = s.get(Batch, batch_id)
        if batch is not None:
            s.delete(batch)


# -- batches created through the OpenAI-compatible API --------------------------------

#: Batch phases before its jobs decide its state (Batch.phase). CANCELLED: cancelled
#: while its file was read, and that reading stopped before any job of it opened.
VALIDATING, FAILED, CANCELLED = "validating", "failed", "cancelled"


def get_batch(store: Store, batch_id: str, tenant: str | None) -> Batch:
    """A batch of `tenant` (any tenant's when None); another tenant's is not found."""
    with store.read() as s:
        batch = s.get(Batch, batch_id)
    if batch is None or (tenant is not None and batch.tenant != tenant):
        raise BatchNotFound(batch_id)
    return batch


def list_api_batches(
    store: Store, tenant: str | None, *, after: str | None = None, limit: int = 20
) -> tuple[list[Batch], bool]:
    """A page of API-created batches, newest first, and whether more follow."""
    with store.read() as s:
        q = select(Batch).where(Batch.endpoint.is_not(None))
        if tenant is not None:
            q = q.where(Batch.tenant == tenant)
        if after:
            q = q.where(older_than(s, Batch, after, tenant, BatchNotFound))
        q = q.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)
        rows = list(s.scalars(q))
    return rows[:limit], len(rows) > limit


def opened(store: Store, batch_id: str) -> None:
    """Its input was accepted and its jobs are queued: its jobs' states decide now."""
    with store.session() as s:
        s.execute(
            update(Batch).where(Batch.id == batch_id).values(phase=None, in_progress_at=utcnow())
        )


def refused(store: Store, batch_id: str, errors: list[dict[str, Any]]) -> None:
    """Its input was refused (nothing of it was queued): the batch failed with `errors`
    (and its `batch.failed` webhook event is written with it)."""
    from genqueue.storage.webhooks import batch_failed  # (it imports this module)

    with store.session() as s:
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(phase=FAILED, errors=errors, failed_at=utcnow())
        )
        batch_failed(s, [batch_id])


def mark_cancelling(store: Store, batch_id: str) -> None:
    """Record when cancelling was asked for (once)."""
    with store.session() as s:
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.cancelling_at.is_(None))
            .values(cancelling_at=utcnow())
        )


def find_by_key(store: Store, key: str) -> Batch | None:
    """The batch created with this idempotency key, if any."""
    with store.read() as s:
        return s.scalar(select(Batch).where(Batch.idempotency_key == key))


def fail_abandoned(store: Store, *, created_before: datetime) -> list[str]:
    """API batches still validating with no job left, created before `created_before`:
    the process reading their file died (its half-loaded jobs were removed as
    abandoned). They fail, saying so, or end `cancelled` when a cancel was asked for
    meanwhile (nothing of them ran); returns their ids."""
    from genqueue.storage.webhooks import batch_failed  # (it imports this module)

    with store.session() as s:
        has_jobs = select(Job.id).where(Job.batch_id == Batch.id).exists()
        rows = s.execute(
            select(Batch.id, Batch.cancelling_at).where(
                Batch.phase == VALIDATING, Batch.created_at < created_before, ~has_jobs
            )
        ).all()
        ids = [r.id for r in rows if r.cancelling_at is None]
        cancelled = [r.id for r in rows if r.cancelling_at is not None]
        if cancelled:
            s.execute(
                update(Batch)
                .where(Batch.id.in_(cancelled), Batch.phase == VALIDATING)
                .values(phase=CANCELLED)
            )
            batch_failed(s, cancelled, event="batch.cancelled")
        if ids:
            message = (
                "the server stopped while reading the input file; nothing of it was queued. "
                "Create the batch again"
            )
            error = {"code": "server_error", "message": message, "param": None, "line": None}
            s.execute(
                update(Batch)
                .where(Batch.id.in_(ids), Batch.phase == VALIDATING)
                .values(phase=FAILED, errors=[error], failed_at=utcnow())
            )
            batch_failed(s, ids)
    return ids + cancelled


def recent_batches(store: Store, *, tenant: str | None, limit: int = 20) -> list[BatchView]:
    """The newest batches whose jobs exist (only `tenant`'s when given), with their
    jobs' live counts."""
    with store.read() as s:
        q = select(Batch).where(Batch.phase.is_(None))
        if tenant is not None:
            q = q.where(Batch.tenant == tenant)
        rows = list(s.scalars(q.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)))
        out = []
        for b in rows:
            jobs = s.scalars(select(Job).where(Job.batch_id == b.id).order_by(Job.created_at))
            views = [JobView(j, job_counts(s, j)) for j in jobs]
            if views:
                out.append(BatchView(b, views))
        return out
