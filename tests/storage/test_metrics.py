"""What /metrics reads from SQL: the result-derived figures of a job, kept for final jobs
(`FinishedJobs`), follow it through a retry (it ends anew) and its removal."""

from __future__ import annotations

from genqueue.storage import lifecycle, metrics
from genqueue.storage.db import Store
from genqueue.storage.retry import retry_items
from tests.storage.factories import make_job, run_job


def test_kept_figures_follow_a_retry_and_a_removal(store: Store) -> None:
    kept = metrics.FinishedJobs()
    job = make_job(store, 6, chunk=3)
    run_job(store, job, fail={0, 4})

    def snap() -> metrics.Snapshot:
        fresh = metrics.snapshot(store, live_within=30)
        cached = metrics.snapshot(store, live_within=30, finished=kept)
        assert (cached.items, cached.tokens, cached.jobs) == (fresh.items, fresh.tokens, fresh.jobs)
        return cached

    first = snap()
    assert first.items == {("m", "succeeded"): 4, ("m", "failed"): 2, ("m", "pending"): 0}
    assert first.tokens == {"m": (12, 16)}  # 3 prompt and 4 generated tokens per success
    assert first.jobs == {"completed_with_errors": 1}
    assert snap() == first  # read from the kept figures this time

    assert retry_items(store, job.id, ("failed",)) == 2
    again = snap()
    assert again.items == {("m", "succeeded"): 4, ("m", "pending"): 2}
    run_job(store, job)
    assert snap().items == {("m", "succeeded"): 6, ("m", "pending"): 0}
    assert snap().jobs == {"completed": 1}

    lifecycle.delete_job(store, job.id)
    assert snap().items == {}
