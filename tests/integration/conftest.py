"""A real deployment for end-to-end tests: Redis, a SQL store, a reconciler thread and
worker processes started through the same supervisor `genqueue worker` uses."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from genqueue.client import Client
from genqueue.scheduler.dispatch import Dispatcher
from genqueue.scheduler.reconciler import Reconciler
from genqueue.settings import Settings
from genqueue.worker.supervisor import Supervisor, WorkerSpec
from genqueue.workeropts import WorkerOptions


@dataclass
class Deployment:
    settings: Settings
    client: Client
    supervisors: list[Supervisor] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    reconciler: threading.Thread | None = None

    def start_workers(
        self,
        model: str,
        processes: int = 1,
        engine: str = "hf",
        *,
        fork_server: bool = False,
        **kw: Any,
    ) -> Supervisor:
        sup = Supervisor(
            WorkerSpec(
                options=WorkerOptions(model=model, engine=engine, device="cpu", threads=1, **kw),
                processes=processes,
                env=self.settings.child_env(),
                fork_server=fork_server,
            )
        )
        sup.start()
        self.supervisors.append(sup)
        return sup

    def start_reconciler(self) -> None:
        rec = Reconciler(
            self.client.store, Dispatcher(self.settings.broker_url or ""), self.settings
        )
        self.reconciler = threading.Thread(target=rec.run, args=(self.stop,), daemon=True)
        self.reconciler.start()

    def close(self) -> None:
        self.stop.set()
        for sup in self.supervisors:
            sup.stop(grace=10)
        if self.reconciler:
            self.reconciler.join(timeout=10)
        self.client.close()


def make_deployment(db_url: str, redis_url: str) -> Deployment:
    settings = Settings(
        database_url=db_url,
        broker_url=redis_url,
        lease_seconds=5,
        reconcile_interval=0.5,
        dispatch_grace_seconds=2,
        chunk_size=16,
    )
    dep = Deployment(settings=settings, client=Client(settings=settings))
    dep.start_reconciler()
    return dep


@pytest.fixture
def deployment(db_url: str, redis_url: str) -> Iterator[Deployment]:
    dep = make_deployment(db_url, redis_url)
    yield dep
    dep.close()
