"""A job after submission: cancel, expiry, final states, removal."""

from __future__ import annotations

import pytest

from genqueue.storage import leases, lifecycle, loading, status
from genqueue.storage.claims import Claim, ClaimRefused
from genqueue.storage.db import Store
from genqueue.storage.errors import StorageError
from genqueue.storage.models import ResultStatus
from genqueue.storage.results import NewResult, iter_results, write_results
from tests.storage.factories import api_batch, finish, make_job, new_job, ok, task_ids


def test_cancel_marks_unfinished_items(store: Store) -> None:
    job = make_job(store, n=8, chunk=4)
    first, _second = task_ids(store, job.id)
    claim = leases.claim_task(store, first, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, Claim)
    write_results(store, claim, [ok(claim.items[0].idx)])
    assert lifecycle.request_cancel(store, job.id)
    assert leases.job_stop_requested(store, job.id)
    assert finish(store, claim, "stopped") == "cancelled"
    lifecycle.finalize_job(store, job.id)  # a no-op when its last completion ended it
    assert status.view_job(store, job.id).job.state == "cancelled"
    statuses = [r.status for r in iter_results(store, job.id)]
    assert statuses.count("succeeded") == 1 and statuses.count("cancelled") == 7
    assert not lifecycle.request_cancel(store, job.id)  # already final


def test_expired_deadline_keeps_partial_results(store: Store) -> None:
    job = make_job(store, n=4, chunk=2)
    first, second = task_ids(store, job.id)
    claim = leases.claim_task(store, first, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, Claim)
    write_results(store, claim, [ok(i.idx) for i in claim.items])
    finish(store, claim, "done")
    assert lifecycle.expire_job(store, job.id)
    view = status.view_job(store, job.id)
    assert view.job.state == "expired"
    assert (view.counts.succeeded, view.counts.expired) == (2, 2)
    refused = leases.claim_task(store, second, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(refused, ClaimRefused)


def test_failed_items_make_completed_with_errors_or_failed(store: Store) -> None:
    job = make_job(store, n=2, chunk=2)
    (tid,) = task_ids(store, job.id)
    claim = leases.claim_task(store, tid, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(claim, Claim)
    bad = [
        NewResult(idx=i, status=ResultStatus.FAILED, error_code="x", error_message="y")
        for i in range(2)
    ]
    write_results(store, claim, bad)
    finish(store, claim, "done")
    lifecycle.finalize_job(store, job.id)  # a no-op when its last completion ended it
    assert status.view_job(store, job.id).job.state == "failed"
    rec = next(iter(iter_results(store, job.id))).to_record()
    assert rec["error"] == {"code": "x", "message": "y"} and rec["usage"] is None


def test_a_job_being_submitted_cannot_be_cancelled_or_written_once_removed(
    store: Store,
) -> None:
    job = new_job(store, chunk=2)
    with pytest.raises(StorageError, match="still being submitted"):
        lifecycle.request_cancel(store, job.id)
    lifecycle.delete_job(store, job.id)  # what the reconciler does to an abandoned submission
    items = [loading.NewItem(idx=0, line=1, custom_id="c0", prompt="p0")]
    with pytest.raises(StorageError, match="removed while it was being submitted"):
        loading.add_chunk(store, job, items, [[0]])


def test_two_processes_ending_a_cancelled_job_at_once(store: Store) -> None:
    """A cancel through the API and the reconciler may end the same job together: both
    fill the missing results; the rows the other wrote first are kept, nothing raises.
    (Found under load: the second INSERT hit the primary key.)"""
    import threading

    for _ in range(5):
        job = make_job(store, n=400, chunk=100)
        assert lifecycle.request_cancel(store, job.id)
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def end(
            job_id: str = job.id,
            start: threading.Barrier = start,
            errors: list[BaseException] = errors,
        ) -> None:
            start.wait()
            try:
                lifecycle.finalize_job(store, job_id)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=end) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        view = status.view_job(store, job.id)
        assert view.job.state == "cancelled" and view.counts.cancelled == 400


def test_a_batch_cancelled_while_its_file_is_read_runs_none_of_it(store: Store) -> None:
    """Cancel during `validating`: the windows stored so far never start, those stored
    later are never sent, a model met later starts stopped, and once the file is stored
    every item ends `cancelled` (found as lines generated for 18 s after the cancel)."""
    from genqueue.api.submissions import cancel_jobs
    from genqueue.storage import batches, dispatch

    batch_id = api_batch(store, endpoint="/v1/chat/completions").id
    job = new_job(store, chunk=2, batch_id=batch_id)
    first = [loading.NewItem(idx=i, line=i + 1, custom_id=f"c{i}", prompt="p") for i in (0, 1)]
    (stored,) = loading.add_chunk(store, job, first, [[0, 1]])

    batches.mark_cancelling(store, batch_id)
    cancel_jobs(type("Ctx", (), {"store": store})(), [job.id])  # what POST .../cancel does
    refused = leases.claim_task(store, stored, "w", lease_seconds=30, max_attempts=3)
    assert isinstance(refused, ClaimRefused)
    later = [loading.NewItem(idx=i, line=i + 1, custom_id=f"c{i}", prompt="p") for i in (2, 3)]
    loading.add_chunk(store, job, later, [[0, 1]])
    assert dispatch.queued_tasks(store, job_id=job.id) == []
    other = new_job(store, chunk=2, model="m2", queue="q2", batch_id=batch_id)
    assert other.cancel_requested

    loading.open_job(store, job.id, 4)
    cancel_jobs(type("Ctx", (), {"store": store})(), [job.id])  # submit_batch_file's end
    view = status.view_job(store, job.id)
    assert view.job.state == "cancelled" and view.counts.cancelled == 4
    assert [r.status for r in iter_results(store, job.id)] == ["cancelled"] * 4


def test_retrying_a_cancelled_batch_ends_its_cancel(store: Store) -> None:
    from genqueue.storage import batches, retry
    from genqueue.storage.models import Batch

    batch_id = api_batch(store, endpoint="/v1/chat/completions").id
    job = make_job(store, n=2, chunk=2, batch_id=batch_id)
    batches.opened(store, batch_id)
    batches.mark_cancelling(store, batch_id)
    assert lifecycle.request_cancel(store, job.id)
    assert retry.retry_items(store, job.id) == 2
    with store.read() as s:
        assert s.get(Batch, batch_id).cancelling_at is None  # in_progress again
