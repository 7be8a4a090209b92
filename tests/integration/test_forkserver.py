"""Worker processes forked from a fork server (worker/forkserver.py), as `genqueue run`
starts them on CPU: real Redis, SQL, tiny models and Celery workers in processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from genqueue.worker.forkserver import ForkedProcess
from genqueue.worker.supervisor import Supervisor
from tests.integration.conftest import Deployment, make_deployment


@pytest.fixture
def dep(sqlite_url: str, redis_url: str) -> Iterator[Deployment]:
    d = make_deployment(sqlite_url, redis_url)
    yield d
    d.close()


def wait_for(what: str, cond: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def forked_pids(sup: Supervisor) -> list[int]:
    """The live children's pids, once every slot was forked."""
    wait_for("every worker forked", lambda: len(sup.pids()) == sup.spec.processes)
    return sup.pids()


def submit(dep: Deployment, tmp_path: Path, n: int, model: str) -> str:
    src = tmp_path / f"in-{time.monotonic_ns()}.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"count to {i}"}) + "\n" for i in range(n)))
    return dep.client.submit(src, kind="generate", model=model, chunk_size=8, max_new_tokens=4)


def outputs(dep: Deployment, job_id: str) -> list[str]:
    return [r["output"] for r in dep.client.results(job_id)]


def test_hf_workers_forked_from_one_server_match_exec_workers(
    dep: Deployment, tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    """Both processes are children of the fork server (one import of torch and
    transformers for the two), produce what exec'd workers produce, and a killed one is
    forked again; stopping ends every process, the server included."""
    model = str(tiny_gpt2_dir)
    sup = dep.start_workers(model, processes=2, fork_server=True)
    assert sup.server is not None
    pids = forked_pids(sup)
    assert all(isinstance(c, ForkedProcess) for c in sup.children)
    assert {psutil.Process(p).ppid() for p in pids} == {sup.server.proc.pid}
    forked_job = submit(dep, tmp_path, 40, model)
    st = dep.client.wait(forked_job, timeout=120, poll=0.2)
    assert st["state"] == "completed" and st["counts"]["succeeded"] == 40

    # A worker killed outright is forked again from the same server.
    victim = sup.children[0]
    assert victim is not None and victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    wait_for("the slot restarted", lambda: (sup.poll(), sup.children[0] is not victim)[1], 30)
    wait_for("the restart forked", lambda: sup.children[0].pid is not None)  # type: ignore[union-attr]
    assert psutil.Process(sup.children[0].pid).ppid() == sup.server.proc.pid  # type: ignore[union-attr]

    server = sup.server.proc
    children = list(sup.children)
    sup.stop(grace=20)
    # A worker stopped before its start-up ended dies of the SIGTERM, as an exec'd one.
    assert children[1].returncode == 0  # type: ignore[union-attr]
    assert children[0].returncode in (0, -signal.SIGTERM)  # type: ignore[union-attr]
    assert server.wait(timeout=10) == 0

    # The same items on exec'd workers: greedy outputs are the same.
    dep.start_workers(model, processes=1)
    exec_job = submit(dep, tmp_path, 40, model)
    assert dep.client.wait(exec_job, timeout=120, poll=0.2)["state"] == "completed"
    assert outputs(dep, forked_job) == outputs(dep, exec_job)
    assert len(set(outputs(dep, forked_job))) > 1


def test_workers_are_execd_when_the_server_is_gone(dep: Deployment, tmp_path: Path) -> None:
    """The fork server killed under running workers: they get SIGTERM (their parent
    died), stop, and the supervisor starts them again as exec'd processes."""
    sup = dep.start_workers("tiny-gpt2", processes=2, engine="dry-run", fork_server=True)
    assert sup.server is not None
    forked_pids(sup)
    sup.server.proc.kill()
    for child in list(sup.children):
        assert child is not None
        child.wait(timeout=20)
    wait_for(
        "exec'd replacements",
        lambda: (sup.poll(), all(isinstance(c, subprocess.Popen) for c in sup.children))[1],
        30,
    )
    assert {psutil.Process(p).ppid() for p in forked_pids(sup)} == {os.getpid()}
    job_id = submit(dep, tmp_path, 24, "tiny-gpt2")
    assert dep.client.wait(job_id, timeout=60, poll=0.2)["state"] == "completed"


def test_a_server_that_cannot_import_hands_over_to_execd_workers(
    dep: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the fork server cannot start (here: its engine module does not import), the
    workers it was asked for are exec'd at once, without a crash-loop backoff."""
    from genqueue.worker import supervisor

    monkeypatch.setattr(
        supervisor, "fork_server_modules", lambda _: ["genqueue.worker.process", "no_such_module"]
    )
    sup = dep.start_workers("tiny-gpt2", processes=2, engine="dry-run", fork_server=True)
    t0 = time.monotonic()
    wait_for(
        "exec'd workers",
        lambda: (sup.poll(), all(isinstance(c, subprocess.Popen) for c in sup.children))[1],
        30,
    )
    assert sup.restarts == [0, 0]
    assert sup.server is not None and "no_such_module" in (sup.server.refused or "")
    job_id = submit(dep, tmp_path, 16, "tiny-gpt2")
    assert dep.client.wait(job_id, timeout=60, poll=0.2)["state"] == "completed"
    assert time.monotonic() - t0 < 60


def test_killing_the_supervisor_leaves_no_process(dep: Deployment, tmp_path: Path) -> None:
    """A supervising process killed with SIGKILL (e.g. `genqueue run` killed): its fork
    server gets SIGTERM, and so do the workers it forked; nothing is orphaned."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from genqueue.settings import Settings
        from genqueue.worker.supervisor import Supervisor, WorkerSpec
        from genqueue.workeropts import WorkerOptions
        settings = Settings(database_url={dep.settings.database_url!r},
                            broker_url={dep.settings.broker_url!r})
        sup = Supervisor(WorkerSpec(
            options=WorkerOptions(model="tiny-gpt2", engine="dry-run", device="cpu"),
            processes=2, env=settings.child_env(), fork_server=True))
        sup.start()
        while len(sup.pids()) < 2:
            time.sleep(0.05)
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert len(descendants) == 3  # the server and its two workers
        proc.kill()
        proc.wait(timeout=10)
        _, alive = psutil.wait_procs(descendants, timeout=30)
        assert not alive, f"orphaned: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stopping_before_the_server_is_ready(dep: Deployment) -> None:
    """Stopped while the server is still importing torch (a run whose input turned out
    bad): nothing was forked, so the server is killed at once instead of being waited
    for; no worker ever ran and no process is left."""
    began = time.time()
    sup = dep.start_workers("tiny-gpt2", processes=2, engine="hf", fork_server=True)
    assert sup.server is not None
    server = sup.server.proc
    sup.stop(grace=30)
    assert server.returncode == -signal.SIGKILL  # not the exit of a server that served
    for child in sup.children:
        assert isinstance(child, ForkedProcess)
        assert child.pid is None and child.returncode == 1  # never forked, never ran
    # A forked child would carry the server's command line; the server itself is gone.
    argv = [str(a) for a in server.args]  # type: ignore[union-attr]
    left = [
        p
        for p in psutil.process_iter(["cmdline", "create_time"])
        if p.info["cmdline"] == argv and p.info["create_time"] >= began - 1
    ]
    assert not left
