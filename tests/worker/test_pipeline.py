"""The worker's task pipeline: the next task is claimed and prepared while the model
generates the current one, the model serves one task at a time, and a stopping worker
releases what it accepted instead of leaving it leased."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

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


class GangEngine(SlowEngine):
    """The echo engine as an engine that batches continuously (like vLLM): it asks for
    `items` requests per call and records the prompts of every call. Each call first
    waits until the Celery side has settled (`feed`): every task accepted, or the
    pipeline holds all it may, so what a gang holds does not depend on timing."""

    def __init__(self, items: int) -> None:
        super().__init__(0.0)
        self.continuous_batch = items
        self.calls: list[list[str]] = []
        self.settled: Callable[[], bool] = lambda: True

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        deadline = time.monotonic() + 10
        while not self.settled() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.calls.append([r.prompt for r in requests])
        return super().generate(requests)


def feed(pipe: Pipeline, engine: GangEngine, tids: list[int]) -> None:
    """Accept every task, as the Celery thread does, and wait for the pipeline to end."""
    accepted = threading.Event()

    def settled() -> bool:
        with pipe._cv:
            return accepted.is_set() or not pipe._room()

    engine.settled = settled

    def celery() -> None:
        for tid in tids:
            assert pipe.accept(tid) == "accepted"
        accepted.set()

    thread = threading.Thread(target=celery)
    thread.start()
    thread.join(30)
    pipe.close(timeout=30)


def test_first_attempts_of_several_jobs_share_the_engine_calls(store: Store) -> None:
    # vLLM runs fastest on calls of hundreds of requests: small tasks, even of different
    # jobs (their item indexes overlap), are generated together, and each result still
    # reaches its own job and item.
    engine = GangEngine(items=24)
    jobs = []
    for name in ("alpha", "beta"):
        job = factories.make_job(
            store,
            12,
            4,
            prompt=lambda i, name=name: f"{name} {i} says hello world",
            model="slow",
            params={"max_new_tokens": 3},
        )
        jobs.append((name, job.id, factories.task_ids(store, job.id)))
    # An idle model waits (up to `linger`) for the tasks sent with the first: all six
    # (24 items, the most a call takes) go in one call, from both jobs.
    pipe = Pipeline(context(store, engine), linger=10)
    assert pipe.gang_items == 24
    started = time.monotonic()
    feed(pipe, engine, [t for _, _, tids in jobs for t in tids])
    assert time.monotonic() - started < 8  # the gang filled up: no need to wait longer
    assert [len(c) for c in engine.calls] == [24]
    assert {p.split()[0] for p in engine.calls[0]} == {"alpha", "beta"}
    for name, job_id, tids in jobs:
        assert view_job(store, job_id).job.state == "completed"
        got = [(r.index, r.output) for r in iter_results(store, job_id)]
        assert got == [(i, f"{name} {i} says") for i in range(12)]
        with store.read() as s:
            attempts = s.execute(
                select(Attempt.task_id, Attempt.number, Attempt.outcome).where(
                    Attempt.job_id == job_id
                )
            ).all()
        assert sorted(attempts) == [(t, 1, "done") for t in tids]


def test_a_gang_is_bounded_by_its_items_and_a_retry_runs_alone(store: Store) -> None:
    engine = GangEngine(items=8)
    job_id, tids = make_job(store, n_tasks=6, per_task=4)
    with store.session() as s:  # the fourth task failed once before: it may be poison
        task = s.get(Task, tids[3])
        assert task is not None
        task.attempts = 1
    pipe = Pipeline(context(store, engine), linger=0)
    feed(pipe, engine, tids)

    def task_of(prompt: str) -> int:
        return tids[int(prompt.split()[1]) // 4]

    calls = [sorted({task_of(p) for p in call}) for call in engine.calls]
    # Alone (nothing waited); two tasks (8 items, the most); the retry alone; two more.
    assert calls == [[tids[0]], tids[1:3], [tids[3]], tids[4:6]]
    assert view_job(store, job_id).counts.succeeded == 24
    with store.read() as s:
        numbers = dict(s.execute(select(Attempt.task_id, Attempt.number)).all())
    assert numbers[tids[3]] == 2 and all(numbers[t] == 1 for t in tids if t != tids[3])


def test_engines_that_want_micro_batches_run_one_task_at_a_time(store: Store) -> None:
    engine = SlowEngine(0.1)
    _, tids = make_job(store, n_tasks=3, per_task=4)
    pipe = Pipeline(context(store, engine))
    assert pipe.gang_items == 0
    for tid in tids:
        pipe.accept(tid)
    pipe.close(timeout=30)
    assert len(engine.spans) == 3  # max_batch_size 4: one call per task
