"""`genqueue run` starts its workers early and stops its stack quickly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

from genqueue.cli.app import app
from genqueue.cli.embedded import EmbeddedStack, start_redis, stop_redis
from genqueue.client import Client

pytestmark = pytest.mark.slow


def test_run_starts_the_workers_before_the_input_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --model the job's model is known up front: the fork server starts importing
    before the embedded Redis and database start, and the worker processes are spawned
    before the input is read, validated and stored, so their imports and model load
    overlap the submit. The run still completes every item, on forked workers."""
    from genqueue.worker.forkserver import ForkServer

    events: list[str] = []
    real_start, real_submit = EmbeddedStack.start_workers, Client.submit
    real_stack, real_server = EmbeddedStack.start.__func__, ForkServer.__init__  # type: ignore[attr-defined]

    def start_stack(cls: type[EmbeddedStack], *args: Any, **kwargs: Any) -> Any:
        events.append("stack")
        return real_stack(cls, *args, **kwargs)

    def start_server(self: ForkServer, *args: Any, **kwargs: Any) -> None:
        events.append("fork server")
        real_server(self, *args, **kwargs)

    def start_workers(self: EmbeddedStack, spec: Any, prepared: Any = None) -> Any:
        events.append(f"workers {Path(spec.options.model).name}")
        sup = real_start(self, spec, prepared)
        forked.extend(type(c).__name__ for c in sup.children)
        return sup

    forked: list[str] = []
    monkeypatch.setattr(EmbeddedStack, "start", classmethod(start_stack))
    monkeypatch.setattr(ForkServer, "__init__", start_server)

    def submit(self: Client, *args: Any, **kwargs: Any) -> str:
        events.append("submit")
        return real_submit(self, *args, **kwargs)

    monkeypatch.setattr(EmbeddedStack, "start_workers", start_workers)
    monkeypatch.setattr(Client, "submit", submit)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(20)))
    out = tmp_path / "out.jsonl"
    args = ["run", str(src), "--model", "bench-dry-run", "--engine", "dry-run"]
    args += ["--workers", "1", "--state-dir", str(tmp_path / "state"), "-o", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert events == ["fork server", "stack", "workers bench-dry-run", "submit"]
    assert forked == ["ForkedProcess"]
    assert len(out.read_text().splitlines()) == 20


def test_stop_redis_ends_the_embedded_server(tmp_path: Path) -> None:
    """The embedded Redis is gone once the stack closes (SHUTDOWN NOSAVE), and its
    files with it; a second client sharing the server keeps it running."""
    server, _ = start_redis(tmp_path)
    other, _ = start_redis(tmp_path)  # a second `genqueue run` on the same state dir
    pid = server.pid
    assert other.pid == pid
    stop_redis(server)
    assert psutil.pid_exists(pid) and other.ping()
    socket = Path(other.socket_file)
    stop_redis(other)
    # Gone (a zombie until its parent, init here, reaps it).
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not socket.exists()
    again, _ = start_redis(tmp_path)  # the state dir starts a fresh server
    assert again.pid != pid and again.ping()
    stop_redis(again)
