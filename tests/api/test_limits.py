"""Tenant limits hold under concurrent submissions: `room_for` keeps the check and the
stored submission together, so parallel requests cannot all pass a limit."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from genqueue.api.errors import LimitReached, PayloadTooLarge
from genqueue.api.limits import room_for
from genqueue.scheduler.submit import JobSpec, submit_job
from genqueue.settings import Settings
from genqueue.storage.db import Store
from genqueue.storage.status import list_jobs


def test_parallel_submissions_do_not_pass_the_live_jobs_limit(store: Store, tmp_path: Path) -> None:
    settings = Settings(api_max_live_jobs=2, api_max_queued_items=100)
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def submit() -> None:
        start.wait()
        try:
            with room_for(store, settings, "t", items=2):
                submit_job(store, None, src, JobSpec(model="tiny-gpt2", tenant="t"))
            outcomes.append("created")
        except LimitReached:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(outcomes) == ["created"] * 2 + ["refused"] * 6
    assert len(list_jobs(store)) == 2
    with (
        pytest.raises(PayloadTooLarge, match="split it"),
        room_for(store, settings, "o", items=101),
    ):
        pass
