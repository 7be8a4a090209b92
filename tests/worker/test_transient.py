"""Transient failures are retried with backoff; anything else propagates at once."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from genqueue.worker.transient import is_transient, retry_transient


def flaky(failures: list[BaseException]) -> tuple[list[int], object]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "ok"

    return calls, fn


def test_transient_errors_are_retried_until_it_works() -> None:
    lost = OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    calls, fn = flaky([lost, ConnectionError("reset"), TimeoutError()])
    assert retry_transient(fn, what="x", stop=None, first_delay=0.001) == "ok"  # type: ignore[arg-type]
    assert len(calls) == 4 and is_transient(lost)


def test_other_errors_are_raised_at_once() -> None:
    bug = ProgrammingError("SELEC 1", {}, Exception("syntax error"))
    calls, fn = flaky([bug])
    with pytest.raises(ProgrammingError):
        retry_transient(fn, what="x", stop=None, first_delay=0.001)  # type: ignore[arg-type]
    assert len(calls) == 1 and not is_transient(bug)


def test_retrying_gives_up_after_its_budget_or_when_stopped() -> None:
    calls, fn = flaky([ConnectionError()] * 100)
    with pytest.raises(ConnectionError):
        retry_transient(fn, what="x", stop=None, max_seconds=0.05, first_delay=0.01)  # type: ignore[arg-type]
    assert 1 < len(calls) < 10
    stop = threading.Event()
    stop.set()
    calls, fn = flaky([ConnectionError()] * 100)
    with pytest.raises(ConnectionError):
        retry_transient(fn, what="x", stop=stop, first_delay=0.01)  # type: ignore[arg-type]
    assert len(calls) == 1
