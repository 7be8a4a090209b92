"""The deliverer: events signed so that the openai package verifies them, retried with
backoff until the receiver answers, given up after the retry window, never following
a redirect, every attempt recorded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from openai import InvalidWebhookSignatureError, OpenAI

from genqueue.scheduler.webhooks import Deliverer, backoff, post
from genqueue.settings import Settings
from genqueue.storage import lifecycle, outbox, webhooks
from genqueue.storage.db import Store
from tests.receiver import Receiver
from tests.storage.factories import make_job

FAST = {
    "webhook_backoff_seconds": 0.05,
    "webhook_backoff_max_seconds": 0.2,
    "webhook_poll_seconds": 0.05,
    "webhook_timeout_seconds": 2.0,
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def sq_store(sqlite_url: str) -> Iterator[Store]:
    store = Store(sqlite_url)
    store.migrate()
    yield store
    store.dispose()


def _deliver_until(
    store: Store, settings: Settings, done: Callable[[], bool], bound: float = 20
) -> None:
    stop = threading.Event()
    thread = Deliverer(store, settings, name="test").start(stop)
    try:
        deadline = time.monotonic() + bound
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)


def test_events_are_signed_retried_and_recorded(sq_store: Store, receiver: Receiver) -> None:
    receiver.fail_first = 2
    ep, _ = webhooks.set_endpoint(sq_store, "acme", url=receiver.url + "/hook")
    job = make_job(sq_store, 3, tenant="acme")
    assert lifecycle.request_cancel(sq_store, job.id)
    _deliver_until(sq_store, Settings(**FAST), lambda: bool(receiver.delivered()))
    (got,) = receiver.wait(1)
    assert [r.status for r in receiver.requests] == [500, 500, 200]
    assert {r.headers["webhook-id"] for r in receiver.requests} == {got.headers["webhook-id"]}
    client = OpenAI(api_key="x")
    event = client.webhooks.unwrap(got.body, got.headers, secret=ep.secret)
    body = json.loads(got.body)
    assert event.id == body["id"] == got.headers["webhook-id"]
    assert body["type"] == "job.cancelled" and body["data"]["id"] == job.id
    with pytest.raises(InvalidWebhookSignatureError):
        client.webhooks.verify_signature(got.body + b" ", got.headers, secret=ep.secret)
    (view,) = outbox.deliveries_for_job(sq_store, job.id)
    assert view["state"] == "delivered" and view["delivered_at"]
    assert [a["status_code"] for a in view["attempts"]] == [500, 500, 200]
    assert view["attempts"][0]["error"] == "HTTP 500 Internal Server Error"
    assert all(a["duration_ms"] >= 0 for a in view["attempts"])


def test_an_event_is_given_up_after_the_retry_window(sq_store: Store, receiver: Receiver) -> None:
    receiver.failing = True
    webhooks.set_endpoint(sq_store, "acme", url=receiver.url)
    job = make_job(sq_store, 2, tenant="acme")
    lifecycle.request_cancel(sq_store, job.id)
    settings = Settings(**{**FAST, "webhook_retry_seconds": 0.5})

    def gave_up() -> bool:
        return outbox.deliveries_for_job(sq_store, job.id)[0]["state"] == "failed"

    _deliver_until(sq_store, settings, gave_up)
    (view,) = outbox.deliveries_for_job(sq_store, job.id)
    assert view["state"] == "failed" and view["last_error"] == "HTTP 500 Internal Server Error"
    assert 2 <= len(view["attempts"]) == len(receiver.requests) <= 20


def test_no_answer_redirects_and_closed_ports_are_failed_attempts() -> None:
    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("location", "http://127.0.0.1:1/elsewhere")
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if self.path == "/big":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"x" * (1 << 20))  # more than is ever read
                return
            time.sleep(1.5)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        slow = post(base + "/slow", "{}", {}, timeout=0.3)
        assert slow.status_code is None and slow.error == "no answer within 0.3s"
        moved = post(base + "/redirect", "{}", {}, timeout=2)
        assert moved.status_code == 302 and not moved.ok and "not followed" in (moved.error or "")
        big = post(base + "/big", "{}", {}, timeout=2)
        assert big.ok
    finally:
        server.shutdown()
        server.server_close()
    closed = post("http://127.0.0.1:1/x", "{}", {}, timeout=2)
    assert closed.status_code is None and (closed.error or "").startswith("could not connect")


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    s = Settings(webhook_backoff_seconds=1, webhook_backoff_max_seconds=10)
    for attempt, full in ((1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (40, 10)):
        delays = [backoff(attempt, s) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1
