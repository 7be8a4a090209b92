"""Webhook events are written with the end they announce: one per job end (the job's
URL, else the tenant's default, else none), one per OpenAI batch when its last job ends
(and batch.failed when its input is refused); the outbox leases, records and reads."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from genqueue.storage import batches, lifecycle, loading, outbox, webhooks
from genqueue.storage.db import Store, utcnow
from genqueue.storage.models import Batch, Job, WebhookEvent
from genqueue.webhooks import WebhookUrlError
from tests.storage.factories import make_job, run_job


def _events(store: Store) -> list[WebhookEvent]:
    with store.read() as s:
        return list(s.scalars(select(WebhookEvent).order_by(WebhookEvent.created_at)))


def test_a_job_end_writes_one_event_to_its_url_or_the_tenants(store: Store) -> None:
    quiet = make_job(store, 4, tenant="nobody")
    run_job(store, quiet)
    assert _events(store) == []  # no URL anywhere: no event

    ep, fresh = webhooks.set_endpoint(store, "acme", url="https://hooks.example/acme")
    assert fresh and ep.secret.startswith("whsec_")
    again, fresh2 = webhooks.set_endpoint(store, "acme", url=None)
    assert not fresh2 and again.secret == ep.secret and again.url == ep.url
    rotated, fresh3 = webhooks.set_endpoint(store, "acme", url=None, rotate=True)
    assert fresh3 and rotated.secret != ep.secret

    default = make_job(store, 4, tenant="acme")
    own = make_job(store, 4, tenant="acme", webhook_url="http://own.example/x")
    run_job(store, default, fail={1})
    run_job(store, own)
    events = _events(store)
    assert [(e.type, e.url, e.job_id) for e in events] == [
        ("job.completed_with_errors", "https://hooks.example/acme", default.id),
        ("job.completed", "http://own.example/x", own.id),
    ]
    body = json.loads(events[0].body)
    assert body["id"] == events[0].id and body["object"] == "event"
    assert body["data"] == {"id": default.id, "object": "job", "state": "completed_with_errors"}

    cancelled = make_job(store, 4, tenant="acme")
    assert lifecycle.request_cancel(store, cancelled.id)
    expired = make_job(store, 4, tenant="acme")
    assert lifecycle.expire_job(store, expired.id)
    assert not lifecycle.expire_job(store, expired.id)  # ended once, announced once
    types = [(e.type, e.job_id) for e in _events(store)][2:]
    assert types == [("job.cancelled", cancelled.id), ("job.expired", expired.id)]


def test_an_openai_batch_is_announced_once_when_its_last_job_ends(store: Store) -> None:
    webhooks.set_endpoint(store, "acme", url="https://hooks.example/acme")
    batch = loading.create_batch(
        store,
        input_name="in.jsonl",
        meta={},
        options={},
        tenant="acme",
        endpoint="/v1/chat/completions",
        webhook_url="https://hooks.example/batch",
    )
    assert isinstance(batch, Batch)
    first = make_job(store, 4, tenant="acme", batch_id=batch.id)
    second = make_job(store, 4, tenant="acme", batch_id=batch.id)
    run_job(store, first)
    assert _events(store) == []  # the batch is still running
    assert lifecycle.request_cancel(store, second.id)
    (event,) = _events(store)
    assert (event.type, event.batch_id, event.url) == (
        "batch.cancelled",
        batch.id,
        "https://hooks.example/batch",
    )
    assert json.loads(event.body)["data"] == {"id": batch.id}

    refused = loading.create_batch(
        store, input_name="x", meta={}, options={}, tenant="acme", endpoint="/v1/completions"
    )
    assert isinstance(refused, Batch)
    batches.refused(store, refused.id, [{"code": "invalid_file", "message": "no"}])
    last = _events(store)[-1]
    assert (last.type, last.batch_id, last.url) == (
        "batch.failed",
        refused.id,
        "https://hooks.example/acme",
    )


def test_the_outbox_leases_records_and_reads_back(store: Store) -> None:
    webhooks.set_endpoint(store, "acme", url="https://hooks.example/acme")
    job = make_job(store, 2, tenant="acme")
    run_job(store, job)
    (due,) = outbox.claim_due(store, "d1", limit=10, lease_seconds=30)
    assert due.attempt == 1 and due.secret and due.url == "https://hooks.example/acme"
    assert outbox.claim_due(store, "d2", limit=10, lease_seconds=30) == []  # leased
    state = outbox.record_attempt(
        store,
        due,
        "d1",
        status_code=500,
        error="HTTP 500",
        duration_ms=3.2,
        delivered=False,
        retry_at=utcnow() - timedelta(seconds=1),
    )
    assert state == outbox.PENDING
    (again,) = outbox.claim_due(store, "d2", limit=10, lease_seconds=30)
    assert again.attempt == 2
    outbox.record_attempt(
        store,
        again,
        "d2",
        status_code=204,
        error=None,
        duration_ms=1,
        delivered=True,
        retry_at=None,
    )
    (view,) = outbox.deliveries_for_job(store, job.id)
    assert view["state"] == "delivered" and view["type"] == "job.completed"
    assert [(a["attempt"], a["status_code"], a["error"]) for a in view["attempts"]] == [
        (1, 500, "HTTP 500"),
        (2, 204, None),
    ]
    assert outbox.claim_due(store, "d3", limit=10, lease_seconds=30) == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "scheme 'ftp' is not allowed"),
        ("https://user:pw@example.com/x", "credentials in the URL"),
        ("https:///nohost", "no host"),
        ("example.com/hook", r"scheme '\(none\)'"),
        ("https://example.com/a b", "whitespace"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_bad_webhook_urls_are_refused_naming_the_field(store: Store, url: str, why: str) -> None:
    with pytest.raises(WebhookUrlError, match=why) as info:
        webhooks.set_endpoint(store, "acme", url=url)
    assert str(info.value).startswith("--url: ") and info.value.field == "--url"


def test_two_deliverers_claiming_at_once_share_the_events(store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    webhooks.set_endpoint(store, "acme", url="https://hooks.example/acme")
    for _ in range(12):
        lifecycle.request_cancel(store, make_job(store, 1, tenant="acme").id)
    with ThreadPoolExecutor(2) as pool:
        claims = list(
            pool.map(
                lambda owner: outbox.claim_due(store, owner, limit=12, lease_seconds=30),
                ["d1", "d2"],
            )
        )
    ids = [{d.id for d in c} for c in claims]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 12


@pytest.mark.parametrize("second", ["finalize", "expire"])
def test_two_processes_ending_one_job_announce_it_once(store: Store, second: str) -> None:
    """The API's cancel and the reconciler can end the same job together: the one that
    comes second waits for the first's commit and leaves the job as it ended, so one
    event is written. (Found in CI: a cancelled job's webhook was delivered twice.)"""
    import threading

    webhooks.set_endpoint(store, "acme", url="https://hooks.example/acme")
    job = make_job(store, 4, tenant="acme")
    lifecycle.stop_job(store, job.id)  # cancel asked for, not yet ended
    outcome: list[object] = []
    with store.session() as first:
        assert lifecycle.finalize_job_in(first, job.id) == "cancelled"
        if second == "finalize":
            other = threading.Thread(
                target=lambda: outcome.append(lifecycle.finalize_job(store, job.id))
            )
        else:
            other = threading.Thread(
                target=lambda: outcome.append(lifecycle.expire_job(store, job.id))
            )
        other.start()
        other.join(1.0)
        assert other.is_alive()  # it waits for this transaction
    other.join(30)
    assert outcome == [None if second == "finalize" else False]
    assert [(e.type, e.job_id) for e in _events(store)] == [("job.cancelled", job.id)]
    with store.read() as s:
        assert s.get(Job, job.id).state == "cancelled"
