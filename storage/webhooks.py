"""Webhook events are born here: a tenant's endpoint and signing secret, and the outbox
row written in the very transaction that ends a job or a batch (so an event is never
lost to a crash between the two, nor sent for an end that rolled back).

Which end is announced, and where:

- a job of an OpenAI batch (a batch with an `endpoint`): nothing for the job; when the
  batch's last job ends, `batch.completed` / `batch.cancelled` / `batch.expired` (the
  OpenAI status of the batch), and `batch.failed` when its input is refused;
- any other job: `job.<state>` (completed, completed_with_errors, failed, cancelled,
  expired).

The URL is the job's (or batch's) `webhook_url`, else the tenant's default endpoint;
with neither, no event is written. Delivery is outbox.py's and the deliverer's
(scheduler/webhooks.py).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from genqueue.storage import dialect
from genqueue.storage.batches import CANCELLED, FAILED, OPENAI_FINAL_STATUS, batch_state
from genqueue.storage.db import Store, aware, utcnow
from genqueue.storage.models import Batch, Job, WebhookEndpoint, WebhookEvent
from genqueue.storage.tenants import check_tenant
from genqueue.webhooks import check_url, new_secret

EVENT_PREFIX = "evt_"


@dataclass(frozen=True)
class Endpoint:
    tenant: str
    url: str | None
    secret: str
    created_at: datetime
    updated_at: datetime


def _endpoint(row: WebhookEndpoint) -> Endpoint:
    return Endpoint(row.tenant, row.url, row.secret, aware(row.created_at), aware(row.updated_at))


def get_endpoint(store: Store, tenant: str) -> Endpoint | None:
    """A tenant's webhook settings, or None when it has none (no secret yet)."""
    with store.read() as s:
        row = s.get(WebhookEndpoint, tenant)
        return _endpoint(row) if row is not None else None


def set_endpoint(
    store: Store, tenant: str, *, url: str | None, rotate: bool = False
) -> tuple[Endpoint, bool]:
    """Set a tenant's default URL (None keeps the one it has; "" removes it) and make
    sure it has a signing secret (a new one with `rotate`). Returns its settings and
    whether the secret is new (it is shown once, then)."""
    check_tenant(tenant)
    if url:
        check_url(url, field="--url")
    now = utcnow()
    with store.session() as s:
        row = s.get(WebhookEndpoint, tenant, with_for_update=True)
        fresh = row is None or rotate
        if row is None:
            row = WebhookEndpoint(
                tenant=tenant, url=url or None, secret=new_secret(), created_at=now, updated_at=now
            )
            s.add(row)
        else:
            if url is not None:
                row.url = url or None
            if rotate:
                row.secret = new_secret()
            row.updated_at = now
        s.flush()
        return _endpoint(row), fresh


def list_endpoints(store: Store) -> list[Endpoint]:
    with store.read() as s:
        return [_endpoint(r) for r in s.scalars(select(WebhookEndpoint).order_by("tenant"))]


# -- events, inside the transaction that ends a job or batch ----------------------------


def _default_url(s: Session, tenant: str) -> str | None:
    return s.scalar(select(WebhookEndpoint.url).where(WebhookEndpoint.tenant == tenant))


def _add_event(
    s: Session,
    *,
    tenant: str,
    type_: str,
    url: str,
    data: dict[str, object],
    job_id: str | None = None,
    batch_id: str | None = None,
) -> str:
    now = utcnow()
    event_id = EVENT_PREFIX + secrets.token_hex(16)
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": type_,
            "created_at": int(now.timestamp()),
            "data": data,
        },
        separators=(",", ":"),
    )
    s.add(
        WebhookEvent(
            id=event_id,
            tenant=tenant,
            type=type_,
            job_id=job_id,
            batch_id=batch_id,
            url=url,
            body=body,
            state="pending",
            attempts=0,
            created_at=now,
            next_attempt_at=now,
        )
    )
    return event_id


def job_ended(s: Session, job: Job) -> None:
    """`job` just reached its final state in this transaction: write its event (or,
    for a job of an OpenAI batch whose last job this was, the batch's)."""
    if job.batch_id is not None:
        q = select(Batch).where(Batch.id == job.batch_id)
        # Rule 3 of the lock order (dialect.py): tasks, the job, then its batch. Two
        # jobs of one batch ending at once queue here, so the second sees the first
        # ended and exactly one of them writes the batch's event.
        q = dialect.for_update(q, s).execution_options(populate_existing=True)
        batch = s.scalars(q).first()
        if batch is not None and batch.endpoint is not None:
            _batch_ended(s, batch)
            return
    url = job.webhook_url or _default_url(s, job.tenant)
    if url:
        data: dict[str, object] = {"id": job.id, "object": "job", "state": job.state}
        if job.batch_id:
            data["batch_id"] = job.batch_id
        _add_event(
            s, tenant=job.tenant, type_=f"job.{job.state}", url=url, data=data, job_id=job.id
        )


def _batch_ended(s: Session, batch: Batch) -> None:
    if batch.phase in (FAILED, CANCELLED):
        return  # announced when it ended before its jobs opened (batch_failed)
    states = list(s.scalars(select(Job.state).where(Job.batch_id == batch.id)))
    status = OPENAI_FINAL_STATUS.get(batch_state(states))
    url = batch.webhook_url or _default_url(s, batch.tenant)
    if status is not None and url:
        _add_event(
            s,
            tenant=batch.tenant,
            type_=f"batch.{status}",
            url=url,
            data={"id": batch.id},
            batch_id=batch.id,
        )


def batch_failed(s: Session, batch_ids: list[str], *, event: str = "batch.failed") -> None:
    """These OpenAI batches just ended before any job of theirs opened, in this
    transaction: failed (their input was refused), or with `event` batch.cancelled
    (cancelled while their file was read, the reading then stopped)."""
    if not batch_ids:
        return
    for batch in s.scalars(select(Batch).where(Batch.id.in_(batch_ids))):
        url = batch.webhook_url or _default_url(s, batch.tenant)
        if url and batch.endpoint is not None:
            _add_event(
                s,
                tenant=batch.tenant,
                type_=event,
                url=url,
                data={"id": batch.id},
                batch_id=batch.id,
            )
