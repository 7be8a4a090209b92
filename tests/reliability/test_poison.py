"""Poison items and bad input: an item that kills or hangs its worker is isolated and
failed after the attempt cap, everything else completes; per-item problems never take
a worker down."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import select

from genqueue.storage.models import Task, TaskState
from tests.reliability.cluster import ClusterFactory

pytestmark = pytest.mark.slow


def test_poison_items_are_isolated_and_failed(
    sqlite_url: str, make_cluster: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """One item SIGKILLs its worker process, another hangs it (the watchdog ends the
    process after the batch timeout). Each attempt is counted in SQL when the task is
    claimed, before any work; at the cap the task is split in two, again and again,
    until the item is alone; then it fails with `attempts_exhausted` and the other 38
    items succeed. The job ends; the number of attempts is bounded."""
    caplog.set_level(logging.WARNING, logger="genqueue.worker.supervisor")
    c = make_cluster(
        sqlite_url,
        lease_seconds=1.0,
        max_attempts=2,
        batch_timeout_seconds=1.0,
    )
    prompts = [f"fine item {i}" for i in range(40)]
    # Tasks are cut from length-sorted items: these two land in different tasks.
    prompts[7] = "CRASH"
    prompts[29] = "this one will HANG the worker"
    c.start_workers(3)
    job_id = c.submit(
        [{"custom_id": f"c{i}", "prompt": p} for i, p in enumerate(prompts)], chunk_size=2
    )
    st = c.wait(job_id, timeout=90)
    assert st["state"] == "completed_with_errors", st
    assert st["counts"]["succeeded"] == 38 and st["counts"]["failed"] == 2
    lines = c.assert_exactly_once(job_id, 40)
    failed = {ln["index"]: ln for ln in lines if ln["status"] == "failed"}
    assert sorted(failed) == [7, 29]
    for ln in failed.values():
        assert ln["error"]["code"] == "attempts_exhausted"
        assert "isolated" in ln["error"]["message"]
    assert lines[8]["output"] == "fine item 8"

    with c.store.session() as s:
        tasks = s.scalars(select(Task).where(Task.job_id == job_id)).all()
    # Each poison item: two attempts together with its neighbour, then two alone; every
    # claim counted, though no attempt of these items ever finished.
    for ln in failed.values():
        assert "stopped its worker 4 time(s)" in ln["error"]["message"]
    split = [t for t in tasks if t.state == TaskState.SPLIT.value]
    assert len(split) == 2 and all(t.attempts == 2 for t in split)
    children = [t for t in tasks if t.parent_id in {t.id for t in split}]
    assert len(children) == 4 and all(t.state == TaskState.DONE.value for t in children)
    # A worker holds its next task while it generates; when a poison item kills it, the
    # held task did no work and is not charged: only attempts that began count.
    began = [a for a in c.attempts(job_id) if a.began_at is not None]
    lost = [a for a in began if a.outcome == "lease_expired"]
    # 2 poison items x (2 attempts together + 2 alone). On a loaded machine a healthy
    # task's 1 s lease can also lapse once; that costs a retry, never an item.
    assert len(lost) >= 8
    # The poison attempts never wrote anything; a lapsed healthy one wrote at most its 2.
    assert sum(a.items_written for a in lost) <= 2 * (len(lost) - 8)
    # Bounded, no retry loop: 18 healthy tasks once; per poison task 2 + 1 + 2.
    assert 18 + 2 * 5 <= len(began) <= 18 + 2 * 5 + 4
    healthy = [t for t in tasks if t.state == TaskState.DONE.value and t.parent_id is None]
    assert len(healthy) == 18 and all(t.attempts <= 2 for t in healthy)
    exits = [r.getMessage() for r in caplog.records if "exited with" in r.getMessage()]
    assert any("exited with -9" in m for m in exits)  # the crash
    assert any("exited with 70" in m for m in exits)  # the watchdog, for the hang


def test_bad_items_fail_alone_and_workers_survive(
    sqlite_url: str, make_cluster: ClusterFactory
) -> None:
    """Per-item problems (a prompt over the model's context, max_new_tokens beyond it, a
    model error on one item) fail only that item, with a code; `truncate=True` cuts
    the over-long prompt instead, and its line says `"truncated": true`. Retrying the
    failed items re-runs those three only. The worker process never exits."""
    c = make_cluster(sqlite_url, fault_env={"GQ_FAULT_MAX_CONTEXT": "32"})
    sup = c.start_workers(1)
    c.wait_workers_ready(1)
    pid = sup.pids()[0]
    records: list[dict[str, Any]] = [
        {"custom_id": f"ok{i}", "prompt": f"a short prompt {i}"} for i in range(10)
    ]
    records += [
        {"custom_id": "long", "prompt": "word " * 100 + "END"},
        {"custom_id": "raise", "prompt": "please RAISE here"},
        {"custom_id": "huge", "prompt": "small", "params": {"max_new_tokens": 40}},
    ]
    plain = c.submit(records, max_new_tokens=8)
    cut = c.submit(records, max_new_tokens=8, truncate=True)
    for job_id, truncate in ((plain, False), (cut, True)):
        st = c.wait(job_id, timeout=60)
        assert st["state"] == "completed_with_errors"
        by_id = {ln["custom_id"]: ln for ln in c.assert_exactly_once(job_id, 13)}
        assert all(by_id[f"ok{i}"]["status"] == "succeeded" for i in range(10))
        assert by_id["raise"]["error"]["code"] == "generation_error"
        assert "injected model failure" in by_id["raise"]["error"]["message"]
        assert by_id["huge"]["error"]["code"] == "max_new_tokens_too_large"
        long = by_id["long"]
        if truncate:
            assert long["status"] == "succeeded" and long["truncated"] is True
            assert long["usage"]["prompt_tokens"] == 32 - 8  # cut to fit the context
        else:
            assert long["error"]["code"] == "prompt_too_long"
            assert "--truncate" in long["error"]["message"]
            assert "truncated" not in long
    # Retrying the failed items runs only those (they fail the same way again).
    before = c.exported(plain)
    assert c.client.retry(plain, statuses=("failed",)) == 3
    assert c.wait(plain, timeout=60)["state"] == "completed_with_errors"
    assert c.exported(plain) == before
    assert sum(a.items_written for a in c.attempts(plain)) == 13 + 3
    assert sup.pids() == [pid] and sup.restarts == [0]
