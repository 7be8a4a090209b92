"""How a job is going, for the dashboard: results written over time, its latest results
and errors (with their input line numbers and custom ids), and which workers, engines
and revisions its attempts ran on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from genqueue.storage import dialect
from genqueue.storage.db import Store, as_utc
from genqueue.storage.models import Attempt, Item, Result, ResultStatus


@dataclass(frozen=True)
class Throughput:
    """Results written per time bucket: `counts[i]` in [start + i*width, + width)."""

    start: float | None
    width: float
    counts: list[int]
    tokens: list[int]


#: Results a worker produced (cancelled and expired ones are filled in when a job ends).
_WORKED = (ResultStatus.SUCCEEDED.value, ResultStatus.FAILED.value)


def throughput(store: Store, job_id: str, *, buckets: int = 60) -> Throughput:
    """A job's worked results (succeeded or failed) bucketed by when they were written
    (at most `buckets` buckets, at least a second wide), counted in SQL."""
    worked = (Result.job_id == job_id) & Result.status.in_(_WORKED)
    with store.read() as s:
        epoch = dialect.epoch_seconds(s, Result.created_at)
        lo, hi = s.execute(select(func.min(epoch), func.max(epoch)).where(worked)).one()
        if lo is None:
            return Throughput(None, 1.0, [], [])
        lo, hi = float(lo), float(hi)
        width = max(1.0, (hi - lo) / buckets)
        slot = func.floor((epoch - lo) / width)
        rows = s.execute(
            select(slot, func.count(), func.coalesce(func.sum(Result.completion_tokens), 0))
            .where(worked)
            .group_by(slot)
        ).all()
    n = min(buckets, int((hi - lo) // width) + 1)
    counts, tokens = [0] * n, [0] * n
    for i, c, t in rows:
        k = min(n - 1, max(0, int(i)))
        counts[k] += int(c)
        tokens[k] += int(t)
    return Throughput(lo, width, counts, tokens)


@dataclass(frozen=True)
class RecentResult:
    """One result row with its item's place in the input."""

    idx: int
    line: int
    custom_id: str
    status: str
    output: str | None
    error_code: str | None
    error_message: str | None
    worker: str | None
    created_at: datetime | None


def recent_results(
    store: Store, job_id: str, *, limit: int = 20, failed: bool = False
) -> list[RecentResult]:
    """The job's latest results (with `failed`: its latest failures only), newest first."""
    q = (
        select(
            Result.idx,
            Item.line,
            Item.custom_id,
            Result.status,
            Result.output,
            Result.error_code,
            Result.error_message,
            Result.worker,
            Result.created_at,
        )
        .join(Item, (Item.job_id == Result.job_id) & (Item.idx == Result.idx))
        .where(Result.job_id == job_id)
        .order_by(Result.created_at.desc(), Result.idx.desc())
        .limit(limit)
    )
    if failed:
        q = q.where(Result.status == ResultStatus.FAILED.value)
    with store.read() as s:
        rows = s.execute(q).all()
    return [
        RecentResult(
            r.idx,
            r.line,
            r.custom_id,
            r.status,
            r.output,
            r.error_code,
            r.error_message,
            r.worker,
            as_utc(r.created_at),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class RunOn:
    """Where a job's attempts ran: a worker with its engine and model revision."""

    worker: str
    engine: str | None
    model_revision: str | None
    attempts: int


def attempts_by_worker(store: Store, job_id: str) -> list[RunOn]:
    """The job's attempts grouped by worker, engine and revision (its provenance)."""
    with store.read() as s:
        rows = s.execute(
            select(Attempt.worker, Attempt.engine, Attempt.model_revision, func.count())
            .where(Attempt.job_id == job_id)
            .group_by(Attempt.worker, Attempt.engine, Attempt.model_revision)
            .order_by(Attempt.worker)
        ).all()
    return [RunOn(str(w), e, r, int(n)) for w, e, r, n in rows]
