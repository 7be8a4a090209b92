"""Running one task (runner.run_task) in-process: the remote-code rule, both ways."""

from __future__ import annotations

import pytest

from genqueue.settings import Settings
from genqueue.storage.db import Store
from genqueue.storage.results import iter_results
from genqueue.storage.status import view_job
from genqueue.worker.engines.dryrun import DryRunEngine
from genqueue.worker.runner import WorkerContext, run_task
from genqueue.workeropts import WorkerOptions
from tests.storage.factories import make_job, task_ids


def run_job(store: Store, *, job_asks: bool, worker_allows: bool) -> list[dict[str, object]]:
    job = make_job(
        store, n=3, chunk=3, params={"max_new_tokens": 4}, options={"trust_remote_code": job_asks}
    )
    ctx = WorkerContext(
        store=store,
        engine=DryRunEngine(WorkerOptions(model="m", engine="dry-run")),
        settings=Settings(),
        worker_id="w1",
        trust_remote_code=worker_allows,
    )
    for tid in task_ids(store, job.id):
        run_task(ctx, tid)
    assert view_job(store, job.id).job.state in ("completed", "failed")
    return [line.to_record() for line in iter_results(store, job.id)]


@pytest.mark.parametrize(
    ("job_asks", "worker_allows", "flag_hint"),
    [
        (True, False, "started without --trust-remote-code"),
        (False, True, "submit with --trust-remote-code"),
    ],
)
def test_remote_code_runs_only_where_both_the_job_and_the_worker_allow_it(
    store: Store, job_asks: bool, worker_allows: bool, flag_hint: str
) -> None:
    lines = run_job(store, job_asks=job_asks, worker_allows=worker_allows)
    assert len(lines) == 3
    for line in lines:
        assert line["status"] == "failed"
        error = line["error"]
        assert isinstance(error, dict) and error["code"] == "remote_code_refused"
        assert flag_hint in error["message"]


@pytest.mark.parametrize("both", [False, True])
def test_a_matching_worker_runs_the_job(store: Store, both: bool) -> None:
    lines = run_job(store, job_asks=both, worker_allows=both)
    assert [ln["status"] for ln in lines] == ["succeeded"] * 3
