"""Transient failures (database restarts, broker blips): telling them apart, and
retrying them with backoff."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors worth retrying: the connection, not the statement, failed.
TRANSIENT = (OperationalError, InterfaceError, ConnectionError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_transient(
    fn: Callable[[], T],
    *,
    what: str,
    stop: threading.Event | None,
    max_seconds: float = 300.0,
    first_delay: float = 0.2,
    max_delay: float = 10.0,
) -> T:
    """Call `fn` until it succeeds, backing off (with jitter) on transient errors for up
    to `max_seconds`; other errors propagate at once."""
    deadline = time.monotonic() + max_seconds
    delay = first_delay
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, type(exc).__name__, delay)
            if stop is not None and stop.wait(delay):
                raise
            if stop is None:
                time.sleep(delay)
            delay = min(max_delay, delay * 2) * (0.75 + random.random() / 2)
