"""Stopping jobs on purpose: cancel, deadline, and retrying what did not succeed.

Running tasks stop after their in-flight micro-batch; results so far are kept and
exported; the rest is marked `cancelled` or `expired`; `genqueue retry` re-runs only
those items, in the same job, and leaves the successes untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from genqueue.storage.models import Result
from tests.reliability.cluster import Cluster, ClusterFactory, at, now_utc, records, wait_for

pytestmark = pytest.mark.slow


def stored(c: Cluster, job_id: str) -> dict[int, tuple[str, str | None, datetime]]:
    """Each stored result: (status, output, when it was written)."""
    with c.store.session() as s:
        rows = s.execute(
            select(Result.idx, Result.status, Result.output, Result.created_at).where(
                Result.job_id == job_id
            )
        ).all()
    return {r.idx: (r.status, r.output, at(r.created_at)) for r in rows}


def gq(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "genqueue.cli", *args],
        env={**os.environ, **c.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def check_retry_keeps_successes(
    c: Cluster, job_id: str, before: dict[int, tuple[str, str | None, datetime]]
) -> None:
    st = c.wait(job_id, timeout=60)
    assert st["state"] == "completed", st
    lines = c.assert_exactly_once(job_id, len(before))
    assert all(ln["status"] == "succeeded" for ln in lines)
    after = stored(c, job_id)
    for idx, row in before.items():
        if row[0] == "succeeded":
            assert after[idx] == row  # not re-run, not rewritten


def test_cancel_stops_after_the_micro_batch_in_flight_then_retry(
    sqlite_url: str, make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """Cancel while two workers are mid-task: each finishes the micro-batch it was
    generating and starts no other; finished results are kept and exported, the others
    are `cancelled`. `genqueue retry` then runs only the cancelled items."""
    log = tmp_path / "fault.log"
    c = make_cluster(
        sqlite_url,
        fault_env={"GQ_FAULT_DELAY": "0.04", "GQ_FAULT_LOG": str(log)},
        max_batch_size=4,
    )
    c.start_workers(2)
    c.wait_workers_ready(2)
    job_id = c.submit(records(120), chunk_size=30)  # micro-batches: 4 items, 0.16 s
    wait_for("results", lambda: c.status_counts(job_id)["succeeded"] >= 16, 30)
    cancelled_at = now_utc()
    assert c.client.cancel(job_id)
    st = c.wait(job_id, timeout=30)
    assert st["state"] == "cancelled", st
    before = stored(c, job_id)
    # A micro-batch may start in the instant between a worker's last check and the
    # cancel's commit (one per worker at most); none starts after that.
    events = [ln.split() for ln in log.read_text().splitlines()]
    late_starts = Counter(
        pid
        for pid, event, _, t in events
        if event == "start" and float(t) > cancelled_at.timestamp()
    )
    assert all(n <= 1 for n in late_starts.values()), late_starts
    # Stored after the cancel: the batch in flight, maybe the one before it (still being
    # written), per worker; never more.
    late = [
        i
        for i, (status, _, when) in before.items()
        if status == "succeeded" and when > cancelled_at
    ]
    assert len(late) <= 2 * 2 * 4, f"{len(late)} results written after the cancel"
    counts = st["counts"]
    assert counts["succeeded"] + counts["cancelled"] == 120
    assert counts["cancelled"] >= 60 and counts["running"] == 0
    lines = c.exported(job_id)
    assert len(lines) == 120
    assert {ln["status"] for ln in lines} == {"succeeded", "cancelled"}
    assert all(
        ln["error"]["code"] == "job_cancelled" for ln in lines if ln["status"] == "cancelled"
    )

    out = gq(c, "retry", job_id, "--json")
    assert json.loads(out.stdout)["requeued"] == counts["cancelled"]
    check_retry_keeps_successes(c, job_id, before)


def test_deadline_expires_the_job_then_retry(pg_url: str, make_cluster: ClusterFactory) -> None:
    """A job whose deadline passes mid-run ends `expired`: results so far are kept, the
    rest are `expired`, nothing is written afterwards. A retry (with no deadline)
    finishes the expired items only."""
    c = make_cluster(pg_url, fault_env={"GQ_FAULT_DELAY": "0.05"}, max_batch_size=4)
    c.start_workers(1)
    c.wait_workers_ready(1)
    job_id = c.submit(records(100), chunk_size=25, deadline=timedelta(seconds=2.5))
    st = c.wait(job_id, timeout=30)
    assert st["state"] == "expired", st
    counts = st["counts"]
    assert counts["succeeded"] > 0 and counts["expired"] > 0
    assert counts["succeeded"] + counts["expired"] == 100
    first: list[dict[str, Any]] = c.exported(job_id)
    assert {ln["status"] for ln in first} == {"succeeded", "expired"}
    assert all(ln["error"]["code"] == "job_expired" for ln in first if ln["status"] == "expired")
    before = stored(c, job_id)
    # The worker stops after its in-flight micro-batch; that batch is not stored.
    wait_for(
        "the task to be released", lambda: not c.client.status(job_id)["counts"]["running"], 10
    )
    assert c.exported(job_id) == first
    assert c.client.status(job_id)["duplicate_executions"] == 0

    assert c.client.retry(job_id) == counts["expired"]
    check_retry_keeps_successes(c, job_id, before)
