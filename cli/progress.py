"""Live progress of a job in the terminal: a bar with items/s, ETA and failure count."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from genqueue.storage.models import FINAL_JOB_STATES
from genqueue.storage.status import JobCounts

#: Status reads come at least this far apart...
MIN_POLL = 0.05
#: ...and this many times as far apart as one read takes, so watching a job costs its
#: database (and this process) at most a tenth of the time, however big the job.
POLL_TO_READ = 10


def next_poll(read_seconds: float, poll: float) -> float:
    """The wait before the next status read, after one that took `read_seconds`: short
    while reads are cheap (the end of a small job is seen at once), up to `poll`."""
    return min(poll, max(MIN_POLL, POLL_TO_READ * read_seconds))


def follow(
    status: Callable[[], dict[str, Any]],
    console: Console,
    *,
    poll: float = 0.5,
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Show progress until the job is final; returns the final status. Status is read
    at most `poll` seconds apart (sooner while reads are cheap, see `next_poll`);
    `check` runs after each read (e.g. to raise when local workers cannot start)."""
    began = time.monotonic()
    st = status()
    took = time.monotonic() - began
    total = st["counts"]["total"]
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TextColumn("[red]{task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    start = time.monotonic()
    first_done: tuple[float, int] | None = None
    with Progress(
        *columns,
        console=console,
        transient=False,
        disable=not console.is_terminal and not console.is_jupyter,
    ) as bar:
        task = bar.add_task(st["state"], total=total, rate="", failed="")
        while True:
            c = st["counts"]
            done = JobCounts.from_dict(c).done
            now = time.monotonic()
            if done and first_done is None:
                first_done = (now, done)
            rate = ""
            if first_done and now > first_done[0]:
                rate = f"{(done - first_done[1]) / (now - first_done[0]):.1f} items/s"
            elif not done:
                rate = "starting workers…" if now - start < 600 else ""
            failed = f"{c['failed']} failed" if c["failed"] else ""
            bar.update(task, completed=done, description=st["state"], rate=rate, failed=failed)
            if st["state"] in FINAL_JOB_STATES:
                return st
            if check:
                check()
            time.sleep(next_poll(took, poll))
            began = time.monotonic()
            st = status()
            took = time.monotonic() - began
