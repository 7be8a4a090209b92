"""The webhook deliverer: sends the outbox's events, signed, at least once.

It runs beside the API (`genqueue api`, `genqueue serve`) and beside the reconciler
(`genqueue scheduler`), never on a worker: a slow or dead endpoint never holds up
generation. Any number of deliverers may run on one database; each claims events with
a lease (storage/outbox.py), so an event is sent again only when an attempt failed or
its deliverer died mid-attempt. Failed attempts are retried with exponential backoff
and jitter until the event is `webhook_retry_seconds` old.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from genqueue.settings import Settings
from genqueue.storage import outbox
from genqueue.storage.db import Store, utcnow
from genqueue.webhooks import signed_headers

log = logging.getLogger(__name__)

#: Bytes of a response read at most (the rest is not read: the answer's body does not
#: matter, only its status).
MAX_RESPONSE_BYTES = 64 * 1024
#: Events sent at once by one deliverer.
PARALLEL = 8
USER_AGENT = "genqueue-webhooks/1"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a hop: the event is not sent on to another URL."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


#: No proxies from the environment, no redirects.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


@dataclass(frozen=True)
class Answer:
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(url: str, body: str, headers: dict[str, str], *, timeout: float) -> Answer:
    """POST `body` to `url`; never raises (a failure is an Answer with its error)."""
    started = time.perf_counter()
    req = urllib.request.Request(
        url, data=body.encode(), headers={**headers, "user-agent": USER_AGENT}, method="POST"
    )

    def took() -> float:
        return (time.perf_counter() - started) * 1000

    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            resp.read(MAX_RESPONSE_BYTES)
            return Answer(resp.status, None, took())
    except urllib.error.HTTPError as exc:
        exc.read(MAX_RESPONSE_BYTES)
        # The status and its reason only: the answer's body is not recorded (tenants
        # read these errors, and a URL may point inside the server's network).
        why = f"HTTP {exc.code} {exc.reason}".strip()
        if 300 <= exc.code < 400:
            why = f"HTTP {exc.code} (redirects are not followed; give the final URL)"
        return Answer(exc.code, why, took())
    except TimeoutError:
        return Answer(None, f"no answer within {timeout:g}s", took())
    except urllib.error.URLError as exc:
        return Answer(None, f"could not connect: {exc.reason}", took())
    except (OSError, ValueError) as exc:
        return Answer(None, f"{type(exc).__name__}: {exc}", took())


def backoff(attempt: int, settings: Settings) -> float:
    """Seconds before the next attempt after `attempt` failed: doubling from
    webhook_backoff_seconds up to webhook_backoff_max_seconds, with half of it random
    (many events failing together do not come back together)."""
    full = min(
        settings.webhook_backoff_max_seconds,
        settings.webhook_backoff_seconds * 2 ** min(attempt - 1, 30),
    )
    return full * random.uniform(0.5, 1.0)


class Deliverer:
    """Claims due events, sends each signed, records the attempt."""

    def __init__(self, store: Store, settings: Settings, *, name: str | None = None) -> None:
        self.store, self.settings = store, settings
        self.name = name or f"deliverer@{socket.gethostname()}:{os.getpid()}"
        self._pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="gq-webhook")

    def tick(self) -> int:
        """One pass: send what is due now (at most PARALLEL events); returns how many."""
        timeout = self.settings.webhook_timeout_seconds
        due = outbox.claim_due(self.store, self.name, limit=PARALLEL, lease_seconds=2 * timeout + 1)
        list(self._pool.map(self._deliver, due))
        return len(due)

    def _deliver(self, due: outbox.Due) -> None:
        s = self.settings
        if due.secret is None:
            answer = Answer(None, "the tenant has no webhook signing secret any more", 0.0)
        else:
            headers = signed_headers(due.secret, due.id, int(time.time()), due.body)
            answer = post(due.url, due.body, headers, timeout=s.webhook_timeout_seconds)
        retry_at: datetime | None = None
        if not answer.ok:
            at = utcnow() + timedelta(seconds=backoff(due.attempt, s))
            if at - due.created_at < timedelta(seconds=s.webhook_retry_seconds):
                retry_at = at
        state = outbox.record_attempt(
            self.store,
            due,
            self.name,
            status_code=answer.status_code,
            error=answer.error,
            duration_ms=answer.duration_ms,
            delivered=answer.ok,
            retry_at=retry_at,
        )
        if state == outbox.FAILED:
            log.warning("webhook %s to %s: giving up (%s)", due.id, due.url, answer.error)

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set; a database outage is logged and retried."""
        delay = self.settings.webhook_poll_seconds
        try:
            while not stop.is_set():
                try:
                    sent = self.tick()
                    delay = self.settings.webhook_poll_seconds
                except Exception as exc:  # the loop must outlive outages
                    log.warning(
                        "webhook delivery failed (%s: %s); retrying", type(exc).__name__, exc
                    )
                    sent, delay = 0, min(delay * 2, 30.0)
                if not sent:
                    stop.wait(delay)
        finally:
            self._pool.shutdown(wait=True)

    def start(self, stop: threading.Event) -> threading.Thread:
        """Run in a daemon thread."""
        thread = threading.Thread(target=self.run, args=(stop,), daemon=True, name="webhooks")
        thread.start()
        return thread
