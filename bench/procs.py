"""Child processes for the benchmarks: exact peak RSS, guaranteed clean-up, py-spy."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ProcResult:
    rc: int
    seconds: float
    peak_rss_mb: float
    stdout: str
    stderr: str


#: A minimal launcher (python -S): forks and execs the command, then writes the child's
#: peak RSS (KiB) to argv[1]. Linux carries a forked child's max RSS over from its
#: parent, so measuring straight from this (large) process would count our own memory.
_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(
    cmd: list[str], *, timeout: float, env: dict[str, str] | None = None
) -> ProcResult:
    """Run a command; its exact peak RSS comes from wait4() in a small launcher."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile(mode="r") as rss,
    ):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCHER, rss.name, *cmd],
            stdout=out,
            stderr=err,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # one process group: a timeout kills both
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise TimeoutError(f"{' '.join(cmd[:3])} ran past {timeout}s") from None
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return ProcResult(
            rc=rc,
            seconds=seconds,
            peak_rss_mb=int(rss.read() or 0) / 1024,  # Linux reports KiB
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


@contextlib.contextmanager
def background(cmd: list[str], *, env: dict[str, str] | None = None, **kw: Any) -> Iterator[Any]:
    """A child process that is always terminated (then killed) on exit."""
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, poll: float = 0.01) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


@contextlib.contextmanager
def py_spy(pids: dict[str, int], out_dir: Path | None, rate: int = 200) -> Iterator[None]:
    """Sample these processes with py-spy (collapsed stacks in out_dir/NAME.txt) while
    the block runs; a no-op when out_dir is None."""
    if out_dir is None:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        cmd = ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
        cmd += ["--nonblocking", "-o", str(out_dir / f"{name}.txt")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)  # let py-spy attach
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


#: py-spy frames of genqueue's own code (its packages live in top-level folders).
REPO_FRAME = r"\((worker|storage|scheduler|genqueue)/"


def hot_functions(
    collapsed: Path, top: int = 15, only: str = REPO_FRAME
) -> list[tuple[str, float]]:
    """Inclusive share of samples per frame (function + line) from a py-spy raw
    (collapsed) profile, for frames matching the regex `only`."""
    import re

    keep = re.compile(only)
    counts: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        for frame in set(stack.split(";")):
            if keep.search(frame):
                counts[frame] = counts.get(frame, 0) + int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [(frame, 100.0 * c / max(1, total)) for frame, c in ranked]
