"""Live worker processes: each writes a heartbeat row (name, queue, model) while it runs,
so the API can say how many workers serve each model."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from sqlalchemy import delete, select, update

from genqueue.storage.db import Store, utcnow
from genqueue.storage.models import WorkerRow

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
