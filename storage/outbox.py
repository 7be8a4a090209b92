"""The webhook outbox as deliverers use it: claim the events due (with a lease, so two
deliverers do not send one event at once), record every attempt, and read them back.

An event is `pending` until an attempt gets a 2xx answer (`delivered`) or until it is
older than the retry window (`failed`). A deliverer that dies holding events loses its
lease; another (or itself, restarted) takes them up when the lease ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update

from genqueue.storage import dialect
from genqueue.storage.db import Store, aware, utcnow
from genqueue.storage.loading import BATCH_PREFIX
from genqueue.storage.models import Job, WebhookDelivery, WebhookEndpoint, WebhookEvent

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class Due:
    """An event claimed for one attempt."""

    id: str
    url: str
    body: str
    #: The tenant's signing secret now (None: the tenant has none any more).
    secret: str | None
    attempt: int
    created_at: datetime


def claim_due(store: Store, owner: str, *, limit: int, lease_seconds: float) -> list[Due]:
    """Lease up to `limit` pending events whose next attempt is due (PostgreSQL: rows
    another deliverer is claiming are skipped, not waited for)."""
    now = utcnow()
    with store.session() as s:
        q = (
            select(WebhookEvent)
            .where(
                WebhookEvent.state == PENDING,
                WebhookEvent.next_attempt_at <= now,
                or_(WebhookEvent.lease_until.is_(None), WebhookEvent.lease_until < now),
            )
            .order_by(WebhookEvent.next_attempt_at)
            .limit(limit)
        )
        rows = list(s.scalars(dialect.for_update_skip_locked(q, s)))
        if not rows:
            return []
        secrets = dict(
            s.execute(
                select(WebhookEndpoint.tenant, WebhookEndpoint.secret).where(
                    WebhookEndpoint.tenant.in_({r.tenant for r in rows})
                )
            )
            .tuples()
            .all()
        )
        until = now + timedelta(seconds=lease_seconds)
        for r in rows:
            r.lease_until, r.lease_owner = until, owner
        return [
            Due(r.id, r.url, r.body, secrets.get(r.tenant), r.attempts + 1, aware(r.created_at))
            for r in rows
        ]


def record_attempt(
    store: Store,
    due: Due,
    owner: str,
    *,
    status_code: int | None,
    error: str | None,
    duration_ms: float,
    delivered: bool,
    retry_at: datetime | None,
) -> str:
    """Record one attempt and move the event on: delivered, retried at `retry_at`, or
    failed (None: the retry window is over). Returns its state."""
    now = utcnow()
    state = DELIVERED if delivered else (PENDING if retry_at is not None else FAILED)
    with store.session() as s:
        s.add(
            WebhookDelivery(
                event_id=due.id,
                attempt=due.attempt,
                at=now,
                status_code=status_code,
                error=error,
                duration_ms=round(duration_ms, 3),
            )
        )
        s.execute(
            update(WebhookEvent)
            .where(
                WebhookEvent.id == due.id,
                WebhookEvent.lease_owner == owner,
                WebhookEvent.state == PENDING,
            )
            .values(
                state=state,
                attempts=WebhookEvent.attempts + 1,
                next_attempt_at=retry_at or now,
                lease_until=None,
                lease_owner=None,
                delivered_at=now if delivered else None,
                last_error=None if delivered else error,
            )
        )
    return state


def _event_dict(ev: WebhookEvent, attempts: list[WebhookDelivery]) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return aware(value).isoformat() if value is not None else None

    return {
        "id": ev.id,
        "type": ev.type,
        "job_id": ev.job_id,
        "batch_id": ev.batch_id,
        "url": ev.url,
        "state": ev.state,
        "created_at": iso(ev.created_at),
        "next_attempt_at": iso(ev.next_attempt_at) if ev.state == PENDING else None,
        "delivered_at": iso(ev.delivered_at),
        "last_error": ev.last_error,
        "attempts": [
            {
                "attempt": a.attempt,
                "at": iso(a.at),
                "status_code": a.status_code,
                "error": a.error,
                "duration_ms": a.duration_ms,
            }
            for a in attempts
        ],
    }


def deliveries_for_job(store: Store, job_id: str) -> list[dict[str, Any]]:
    """The webhook events of a job (or of a batch and its jobs), oldest first, each
    with every delivery attempt: time, HTTP status, error, duration."""
    with store.read() as s:
        if job_id.startswith(BATCH_PREFIX):
            jobs = select(Job.id).where(Job.batch_id == job_id)
            where = or_(WebhookEvent.batch_id == job_id, WebhookEvent.job_id.in_(jobs))
        else:
            where = WebhookEvent.job_id == job_id
        events = list(
            s.scalars(select(WebhookEvent).where(where).order_by(WebhookEvent.created_at))
        )
        attempts: dict[str, list[WebhookDelivery]] = {e.id: [] for e in events}
        if events:
            for a in s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.event_id.in_(list(attempts)))
                .order_by(WebhookDelivery.id)
            ):
                attempts[a.event_id].append(a)
        return [_event_dict(e, attempts[e.id]) for e in events]
