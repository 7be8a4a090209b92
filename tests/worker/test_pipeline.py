"""The worker's task pipeline: the next task is claimed and prepared while the model
generates the current one, the model serves one task at a time, and a stopping worker
releases what it accepted instead of leaving it leased."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from sqlalchemy import select

from genqueue.settings import Settings
from genqueue.storage.db import Store, as_utc
from genqueue.storage.models import Attempt, Task
from genqueue.storage.results import iter_results
from genqueue.storage.status import view_job
from genqueue.worker.engines.base import GenRequest, GenResult
from genqueue.worker.engines.dryrun import DryRunEngine
from genqueue.worker.pipeline import ModelThread, Pipeline
from genqueue.worker.runner import WorkerContext, run_task
from genqueue.workeropts import WorkerOptions
from tests.storage import factories


class SlowEngine(DryRunEngine):
    """The echo engine, slowed down, recording when it generated and how many callers
    were inside `generate` at once."""

    def __init__(self, seconds: float) -> None:
        super().__init__(WorkerOptions(model="slow", engine="dry-run"))
        self.seconds = seconds
        self.active = self.max_active = 0
        self.spans: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        start = time.time()
        time.sleep(self.seconds)
        out = super().generate(requests)
        with self._lock:
            self.active -= 1
        self.spans.append((start, time.time()))
        return out


def make_job(store: Store, n_tasks: int, per_task: int) -> tuple[str, list[int]]:
    job = factories.make_job(
        store,
        n_tasks * per_task,
        per_task,
        prompt="item {} says hello world".format,
        model="slow",
        params={"max_new_tokens": 4},
    )
    return job.id, factories.task_ids(store, job.id)


def context(store: Store, engine: DryRunEngine, **settings: object) -> WorkerContext:
    return WorkerContext(
        store=store,
        engine=engine,
        settings=Settings(max_batch_size=4, **settings),  # type: ignore[arg-type]
        worker_id="w1",
    )


def test_the_next_task_is_claimed_while_the_model_generates(store: Store) -> None:
    engine = SlowEngine(0.15)
    job_id, tids = make_job(store, n_tasks=4, per_task=8)  # 2 micro-batches per task
    pipe = Pipeline(context(store, engine))
    for tid in tids:
        # Returns as soon as the model started on it: the task is not finished yet.
        assert pipe.accept(tid) == "accepted"
        with store.read() as s:
            assert s.scalar(select(Task.state).where(Task.id == tid)) == "running"
    pipe.close(timeout=30)

    assert engine.max_active == 1  # one task at a time on the model
    with store.read() as s:
        claimed = {
            a.task_id: as_utc(a.started_at).timestamp()  # type: ignore[union-attr]
            for a in s.scalars(select(Attempt).where(Attempt.job_id == job_id))
        }
    # Task k+1 was claimed while task k was still generating (its second micro-batch).
    generation_ends = [end for _, end in engine.spans][1::2]
    for k in range(len(tids) - 1):
        assert claimed[tids[k + 1]] < generation_ends[k]
    view = view_job(store, job_id)
    assert view.job.state == "completed" and view.counts.succeeded == 32
    assert [r.index for r in iter_results(store, job_id)] == list(range(32))


def test_a_pipeline_and_a_plain_run_store_the_same_results(store: Store) -> None:
    first, tids_a = make_job(store, n_tasks=3, per_task=5)
    second, tids_b = make_job(store, n_tasks=3, per_task=5)
    pipe = Pipeline(context(store, DryRunEngine(WorkerOptions(model="slow", engine="dry-run"))))
    for tid in tids_a:
        pipe.accept(tid)
    pipe.close(timeout=30)
    ctx = context(store, DryRunEngine(WorkerOptions(model="slow", engine="dry-run")))
    for tid in tids_b:
        assert run_task(ctx, tid) == "done"

    def lines(job_id: str) -> list[tuple[str | None, str | None, int | None]]:
        return [
            (r.output, r.finish_reason, r.usage and r.usage.completion_tokens)
            for r in iter_results(store, job_id)
        ]

    assert lines(first) == lines(second)
    assert view_job(store, first).job.state == "completed"


def test_a_stopping_worker_releases_the_tasks_it_accepted(store: Store) -> None:
    engine = SlowEngine(0.1)
    job_id, tids = make_job(store, n_tasks=2, per_task=12)  # 3 micro-batches per task
    ctx = context(store, engine)
    pipe = Pipeline(ctx)
    pipe.accept(tids[0])
    waiting = threading.Thread(target=pipe.accept, args=(tids[1],))  # claimed, waits
    waiting.start()
    time.sleep(0.15)
    ctx.stop.set()  # SIGTERM: stop after the micro-batch in flight
    waiting.join(10)
    pipe.close(timeout=30)
    with store.read() as s:
        states = dict(s.execute(select(Task.id, Task.state).where(Task.job_id == job_id)).all())
        outcomes = set(s.scalars(select(Attempt.outcome).where(Attempt.job_id == job_id)))
    # Nothing stays leased to the stopped worker: both tasks are back in the queue with
    # what was written kept, ready for another worker.
    assert states == {tids[0]: "queued", tids[1]: "queued"}
    assert outcomes == {"stopped"}
    done = view_job(store, job_id).counts.succeeded
    assert 0 < done < 24
    assert len([r for r in iter_results(store, job_id)]) == done


class ThreadRecordingEngine(SlowEngine):
    """Remembers the thread that built it and every thread that called `generate`."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.loaded_on = threading.get_ident()
        self.generated_on: set[int] = set()

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        self.generated_on.add(threading.get_ident())
        return super().generate(requests)


def test_the_thread_that_loads_the_engine_makes_every_generate_call(store: Store) -> None:
    # vLLM's CPU backend sets up the OpenMP team of the thread that built it: the worker
    # loads its engine on the model thread, and the pipeline generates on that thread.
    job_id, tids = make_job(store, n_tasks=3, per_task=8)
    model_thread = ModelThread()
    engine = model_thread.call(ThreadRecordingEngine)
    assert engine.loaded_on != threading.get_ident()
    pipe = Pipeline(context(store, engine), model_thread)
    for tid in tids:
        pipe.accept(tid)
    pipe.close(timeout=30)
    assert engine.generated_on == {engine.loaded_on}
    assert view_job(store, job_id).counts.succeeded == 24


def test_a_failed_load_on_the_model_thread_reaches_the_caller() -> None:
    def broken() -> None:
        raise RuntimeError("no such model")

    model_thread = ModelThread()
    try:
        model_thread.call(broken)
    except RuntimeError as exc:
        assert str(exc) == "no such model"
    else:
        raise AssertionError("the load error was swallowed")
    assert model_thread.call(lambda: 42) == 42  # the thread still serves
