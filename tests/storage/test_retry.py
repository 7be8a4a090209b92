"""Re-running a finished job's unsuccessful items."""

from __future__ import annotations

from genqueue.storage import dispatch, leases, lifecycle, retry, status
from genqueue.storage.claims import Claim
from genqueue.storage.db import Store
from genqueue.storage.models import ResultStatus
from genqueue.storage.results import NewResult, iter_results, write_results
from tests.storage.factories import finish, make_job, ok, task_ids


def test_retry_reruns_only_unsuccessful_items(store: Store) -> None:
    job = make_job(store, n=6, chunk=3)
    first, _second = task_ids(store, job.id)
    claim = leases.claim_task(store, first, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, Claim)
    bad = NewResult(
        idx=1, status=ResultStatus.FAILED, error_code="generation_error", error_message="boom"
    )
    write_results(store, claim, [ok(0), bad, ok(2)])
    finish(store, claim, "done")
    lifecycle.request_cancel(store, job.id)  # items 3..5 never ran
    assert status.view_job(store, job.id).job.state == "cancelled"

    assert retry.retry_items(store, job.id) == 4
    view = status.view_job(store, job.id)
    assert view.job.state == "queued" and not view.job.cancel_requested
    assert (view.counts.succeeded, view.counts.failed, view.counts.pending) == (2, 0, 4)
    todo = dispatch.queued_tasks(store, job_id=job.id)
    assert len(todo) == 2  # chunk size 3: items 1,3,4 and 5
    for tid, _queue, _prio in todo:
        got = leases.claim_task(store, tid, "w", lease_seconds=30, max_attempts=3)
        assert isinstance(got, Claim) and got.attempt == 1
        write_results(store, got, [ok(i.idx, "retried") for i in got.items])
        finish(store, got, "done")
    lifecycle.finalize_job(store, job.id)  # a no-op when its last completion ended it
    assert status.view_job(store, job.id).job.state == "completed"
    outputs = {r.index: r.output for r in iter_results(store, job.id)}
    assert outputs == {0: "out", 1: "retried", 2: "out", 3: "retried", 4: "retried", 5: "retried"}
    assert retry.retry_items(store, job.id) == 0
