"""Live worker processes: each writes a heartbeat row (name, queue, model) while it runs,
so the API can say how many workers serve each model, and operators (the dashboard,
`genqueue workers`) see what each one works on and which models wait for a worker."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, select, update

from genqueue.protocol import queue_revision
from genqueue.storage.db import Store, aware, utcnow
from genqueue.storage.models import (
    LIVE_JOB_STATES,
    OPEN_TASK_STATES,
    Job,
    JobState,
    Result,
    Task,
    TaskState,
    WorkerRow,
)

#: Rows of workers silent this long (killed, never removed) are deleted.
FORGET_SECONDS = 24 * 3600.0


def beat(store: Store, name: str, *, queue: str, model: str, engine: str | None) -> None:
    """Record that worker `name` is alive (creating its row on the first beat, when the
    rows of long-dead workers are also cleared away)."""
    now = utcnow()
    with store.session() as s:
        done = s.execute(update(WorkerRow).where(WorkerRow.name == name).values(seen_at=now))
        if not done.rowcount:
            forget = now - timedelta(seconds=FORGET_SECONDS)
            s.execute(delete(WorkerRow).where(WorkerRow.seen_at < forget))
            s.add(
                WorkerRow(
                    name=name, queue=queue, model=model, engine=engine, started_at=now, seen_at=now
                )
            )


def leave(store: Store, name: str) -> None:
    """A worker stopping removes its row."""
    with store.session() as s:
        s.execute(delete(WorkerRow).where(WorkerRow.name == name))


def live_by_queue(store: Store, *, within_seconds: float) -> Counter[str]:
    """Workers seen in the last `within_seconds`, counted per queue."""
    since = utcnow() - timedelta(seconds=within_seconds)
    with store.read() as s:
        queues = s.scalars(select(WorkerRow.queue).where(WorkerRow.seen_at >= since)).all()
    return Counter(queues)


#: A worker's items/s is measured over its results of this many recent seconds.
RATE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class CurrentTask:
    """A task a worker holds the lease of."""

    task_id: int
    job_id: str
    tenant: str
    n_items: int
    done: int


@dataclass(frozen=True)
class WorkerView:
    """A worker process as operators see it: its heartbeat row, the tasks it holds and
    its recent rate."""

    name: str
    queue: str
    model: str
    engine: str | None
    started_at: datetime
    seen_at: datetime
    heartbeat_age: float
    live: bool
    tasks: list[CurrentTask] = field(default_factory=list)
    items_per_second: float = 0.0

    @property
    def host(self) -> str:
        """The host part of a worker's name (`gq-PID@HOST`), else the whole name."""
        return self.name.rpartition("@")[2] or self.name


def list_workers(store: Store, *, within_seconds: float) -> list[WorkerView]:
    """Every worker row (live: seen in the last `within_seconds`), by model then name,
    with the tasks each one leases now and its items/s over the last minute."""
    now = utcnow()
    since = now - timedelta(seconds=RATE_WINDOW_SECONDS)
    with store.read() as s:
        rows = list(s.scalars(select(WorkerRow).order_by(WorkerRow.model, WorkerRow.name)))
        names = [r.name for r in rows]
        held: dict[str, list[CurrentTask]] = {}
        rates: dict[str, int] = {}
        if names:
            for t in s.execute(
                select(
                    Task.id,
                    Task.job_id,
                    Task.lease_owner,
                    Task.lease_expires_at,
                    Task.n_items,
                    Task.n_succeeded,
                    Task.n_failed,
                    Job.tenant,
                )
                .join(Job, Job.id == Task.job_id)
                .where(Task.state == TaskState.RUNNING.value, Task.lease_owner.in_(names))
                .order_by(Task.id)
            ):
                if t.lease_expires_at is None or aware(t.lease_expires_at) <= now:
                    continue
                held.setdefault(str(t.lease_owner), []).append(
                    CurrentTask(t.id, t.job_id, t.tenant, t.n_items, t.n_succeeded + t.n_failed)
                )
            rates = {
                str(w): int(n)
                for w, n in s.execute(
                    select(Result.worker, func.count())
                    .where(Result.worker.in_(names), Result.created_at >= since)
                    .group_by(Result.worker)
                )
            }
    out = []
    for r in rows:
        age = max(0.0, (now - aware(r.seen_at)).total_seconds())
        window = min(RATE_WINDOW_SECONDS, max(1.0, (now - aware(r.started_at)).total_seconds()))
        out.append(
            WorkerView(
                name=r.name,
                queue=r.queue,
                model=r.model,
                engine=r.engine,
                started_at=aware(r.started_at),
                seen_at=aware(r.seen_at),
                heartbeat_age=age,
                live=age <= within_seconds,
                tasks=held.get(r.name, []),
                items_per_second=round(rates.get(r.name, 0) / window, 2),
            )
        )
    return out


@dataclass(frozen=True)
class QueueDepth:
    """The unfinished work of one queue (one model at one revision)."""

    queue: str
    model: str
    revision: str | None
    #: Items of queued/pending tasks, waiting for a worker.
    waiting: int
    #: Items of leased tasks without a result yet.
    running: int
    live_workers: int

    @property
    def unserved(self) -> bool:
        """Work is waiting and no live worker serves it."""
        return (self.waiting + self.running) > 0 and self.live_workers == 0


def queue_depths(
    store: Store, *, within_seconds: float, tenant: str | None = None
) -> list[QueueDepth]:
    """Per queue with unfinished work (only `tenant`'s when given) or a live worker: the
    items waiting and running, and the live workers serving it."""
    open_items = Task.n_items - Task.n_succeeded - Task.n_failed
    waiting = case((Task.state != TaskState.RUNNING.value, open_items), else_=0)
    running = case((Task.state == TaskState.RUNNING.value, open_items), else_=0)
    q = (
        select(
            Job.queue,
            func.min(Job.model),
            func.min(Job.revision),
            func.coalesce(func.sum(waiting), 0),
            func.coalesce(func.sum(running), 0),
        )
        .join(Job, Job.id == Task.job_id)
        .where(
            Job.state.in_([*LIVE_JOB_STATES, JobState.SUBMITTING.value]),
            Job.cancel_requested.is_(False),
            Task.state.in_(OPEN_TASK_STATES),
        )
        .group_by(Job.queue)
        .order_by(Job.queue)
    )
    if tenant is not None:
        q = q.where(Job.tenant == tenant)
    since = utcnow() - timedelta(seconds=within_seconds)
    with store.read() as s:
        rows = s.execute(q).all()
        served = s.execute(
            select(WorkerRow.queue, func.min(WorkerRow.model), func.count())
            .where(WorkerRow.seen_at >= since)
            .group_by(WorkerRow.queue)
        ).all()
    live = {queue: int(n) for queue, _, n in served}
    out = [
        QueueDepth(
            queue, model, queue_revision(model, queue, revision), int(w), int(r), live.get(queue, 0)
        )
        for queue, model, revision, w, r in rows
    ]
    # Queues that live workers serve but nothing waits on: depth 0.
    busy = {q.queue for q in out}
    out += [QueueDepth(q, m, None, 0, 0, n) for q, m, n in served if q not in busy]
    return sorted(out, key=lambda d: d.queue)


@dataclass(frozen=True)
class Unserved:
    """A live job whose model has no live worker: its items wait until one starts."""

    job_id: str
    model: str
    revision: str | None
    engine: str | None
    trust_remote_code: bool


def unserved_jobs(store: Store, job_ids: list[str], *, within_seconds: float) -> list[Unserved]:
    """Of these jobs, those still queued or running whose queue no live worker serves."""
    if not job_ids:
        return []
    with store.read() as s:
        jobs = list(
            s.scalars(
                select(Job).where(
                    Job.id.in_(job_ids),
                    Job.state.in_(LIVE_JOB_STATES),
                    Job.cancel_requested.is_(False),
                )
            )
        )
    live = live_by_queue(store, within_seconds=within_seconds)
    return [
        Unserved(
            j.id,
            j.model,
            queue_revision(j.model, j.queue, j.revision),
            j.engine,
            bool((j.options or {}).get("trust_remote_code")),
        )
        for j in jobs
        if not live.get(j.queue)
    ]
