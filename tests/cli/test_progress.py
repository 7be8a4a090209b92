"""The live progress of `genqueue run` and `submit --wait`."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from genqueue.cli.progress import MIN_POLL, follow, next_poll


def test_status_reads_are_frequent_while_cheap_and_rare_when_costly() -> None:
    assert next_poll(0.001, 0.5) == MIN_POLL  # a small job: its end is seen at once
    assert next_poll(0.02, 0.5) == 0.2  # ten times the read
    assert next_poll(0.3, 0.5) == 0.5  # a huge job's counts: never more than `poll` apart


def test_follow_returns_the_final_status_and_runs_check_between_reads() -> None:
    states = iter(["queued", "running", "running", "completed"])
    checks: list[int] = []

    def status() -> dict[str, Any]:
        state = next(states)
        done = {"queued": 0, "running": 5, "completed": 10}[state]
        counts = {"total": 10, "succeeded": done, "failed": 0, "running": 0, "pending": 10 - done}
        return {"state": state, "counts": counts}

    console = Console(file=io.StringIO())
    final = follow(status, console, poll=0.5, check=lambda: checks.append(1))
    assert final["state"] == "completed" and final["counts"]["succeeded"] == 10
    assert len(checks) == 3  # after each read but the final one
