"""A fork server: worker processes forked from one that imported everything once.

A worker process spends about 5 s of CPU importing torch, transformers, Celery and
SQLAlchemy before it loads its model. On a CPU host the supervisor's N processes all pay
that at once, on the same cores the embedded run is using to store the input. With a
fork server they pay it once: `python -m genqueue.worker.forkserver REPLY_FD MODULES
[WorkerOptions flags]` imports MODULES (comma-separated: the worker and its engine),
calls `prefork(options)` of each that has one (the hf engine imports what loading that
model will import), then forks one child per request; each child runs
`genqueue.worker.process.main` with its own arguments and environment.

Forking is safe only before any thread or OpenMP team exists: the server imports
modules and nothing else (no model, no connection, no tensor op), checks that it is
still single-threaded, and refuses to serve otherwise. Each child loads its model
itself. The supervisor uses a fork server only where this holds (CPU, hf and dry-run
engines); GPUs and engines that start their own processes run exec'd workers as before.

The protocol, one JSON object per line:
  supervisor -> server (the server's stdin):
    {"spawn": ID, "argv": [...], "env": {...}, "log": PATH | null}
    {"signal": ID, "sig": N}          (for a child whose pid the supervisor lacks yet)
  server -> supervisor (REPLY_FD):
    {"ready": true} | {"refused": REASON}
    {"spawned": ID, "pid": PID}
    {"exited": ID, "returncode": RC}  (negative: killed by that signal, as with Popen)
When its stdin closes (the supervisor stopped or died) the server exits; its children
get SIGTERM (PR_SET_PDEATHSIG) and stop as a worker does on SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies, so no orphan keeps a
    model loaded (or a GPU)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _threads() -> int:
    """OS threads of this process (Python's own count misses native ones)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _exit_code(exc: SystemExit) -> int:
    """The status Python gives an uncaught SystemExit (a message is printed, then 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _child(req: dict[str, Any], inherited: list[int]) -> None:
    """In the forked child: become the worker `req` describes; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        if req.get("log"):
            out = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.close(out)
        die_with_parent()
        os.environ.clear()
        os.environ.update(req["env"])
        random.seed()  # the server's state is every child's: draw afresh
        sys.argv = ["genqueue.worker.process", *req["argv"]]
        from genqueue.worker import process

        process.main(req["argv"])
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        # As `python -m genqueue.worker.process` ends: everything is recorded and closed.
        import logging

        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class _Server:
    def __init__(self, reply_fd: int) -> None:
        self.reply_fd = reply_fd
        self.by_pid: dict[int, int] = {}  # child pid -> request id
        self.pids: dict[int, int] = {}  # request id -> pid
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def reply(self, **msg: Any) -> None:
        os.write(self.reply_fd, (json.dumps(msg) + "\n").encode())

    def handle(self, req: dict[str, Any]) -> None:
        if "spawn" in req:
            rid = int(req["spawn"])
            pid = os.fork()
            if pid == 0:
                _child(req, [self.reply_fd, self.wake_r, self.wake_w])
            self.by_pid[pid], self.pids[rid] = rid, pid
            self.reply(spawned=rid, pid=pid)
        elif "signal" in req:
            target = self.pids.get(int(req["signal"]))
            if target is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, int(req["sig"]))

    def reap(self) -> None:
        while self.by_pid:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.by_pid:
                rid = self.by_pid.pop(pid)
                self.pids.pop(rid, None)
                self.reply(exited=rid, returncode=os.waitstatus_to_exitcode(status))

    def serve(self) -> None:
        buf = b""
        while True:
            ready, _, _ = select.select([0, self.wake_r], [], [], 1.0)
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            self.reap()
            if 0 not in ready:
                continue
            chunk = os.read(0, 65536)
            if not chunk:
                return  # the supervisor is done (or gone)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    self.handle(json.loads(line))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    reply_fd, modules = int(args[0]), args[1].split(",")
    # Ctrl-C in a terminal reaches every process of the group: the workers handle it,
    # and the supervisor closes this server once they are done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        loaded = [importlib.import_module(name) for name in modules]
    except BaseException as exc:
        os.write(reply_fd, (json.dumps({"refused": f"importing failed: {exc}"}) + "\n").encode())
        return 1
    from genqueue.workeropts import WorkerOptions

    options, _ = WorkerOptions.from_args(args[2:])
    for module in loaded:
        hook = getattr(module, "prefork", None)
        if hook is None:
            continue
        try:
            hook(options)
        except Exception as exc:
            # Only a head start: the workers meet (and report) a real problem, and a
            # built-in model that does not exist yet is built by the first of them.
            if os.environ.get("GENQUEUE_DEBUG", "") not in ("", "0"):
                print(f"genqueue fork server: {module.__name__}.prefork: {exc}", file=sys.stderr)
    if _threads() != 1:
        reason = f"{_threads()} threads run after the imports; forking would be unsafe"
        os.write(reply_fd, (json.dumps({"refused": reason}) + "\n").encode())
        return 1
    server = _Server(reply_fd)
    server.reply(ready=True)
    server.serve()
    return 0


# --- the supervisor's side ----------------------------------------------------------


class ForkedProcess:
    """A worker forked by a fork server, with the part of `subprocess.Popen`'s interface
    the supervisor uses (`pid`, `returncode`, `poll`, `wait`, `send_signal`, `kill`).

    `pid` is None until the server has forked it (the server may still be importing)."""

    def __init__(self, server: ForkServer, rid: int) -> None:
        self.server = server
        self.rid = rid
        self.pid: int | None = None
        self.returncode: int | None = None

    def poll(self) -> int | None:
        with self.server.cond:
            if self.returncode is None and self.server.dead:
                self._orphaned()
            return self.returncode

    def _orphaned(self) -> None:
        """The server is gone: a child it never forked did not run, and one it forked
        got SIGTERM (PR_SET_PDEATHSIG) and is stopping on its own."""
        if self.pid is None:
            self.returncode = 1
            return
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            self.returncode = -signal.SIGTERM

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
            with self.server.cond:
                if self.returncode is None:
                    self.server.cond.wait(0.1 if left is None else min(0.1, left))
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
        else:
            self.server.request({"signal": self.rid, "sig": int(sig)})

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The supervisor's handle on one fork server process."""

    def __init__(
        self, modules: list[str], options_args: list[str], env: dict[str, str], log: str | None
    ) -> None:
        r, w = os.pipe()
        out = open(log, "ab") if log else None  # noqa: SIM115 (the child owns it)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "genqueue.worker.forkserver",
                    str(w),
                    ",".join(modules),
                    *options_args,
                ],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                pass_fds=(w,),
                env=env,
                preexec_fn=die_with_parent,
            )
        finally:
            os.close(w)
            if out is not None:
                out.close()
        self.cond = threading.Condition()
        self.dead = False
        self.ready = False
        self.refused: str | None = None
        self.children: dict[int, ForkedProcess] = {}
        self.forked = 0
        self._next = 0
        self._replies = os.fdopen(r, "rb")
        threading.Thread(target=self._read, daemon=True, name="forkserver-replies").start()

    def _read(self) -> None:
        for line in self._replies:
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                with self.cond:
                    self._on(msg)
                    self.cond.notify_all()
        with self.cond:
            self.dead = True
            self.cond.notify_all()
        self._replies.close()

    def _on(self, msg: dict[str, Any]) -> None:
        if msg.get("ready"):
            self.ready = True
        elif "refused" in msg:
            self.refused = str(msg["refused"])
        elif "spawned" in msg:
            self.forked += 1
            child = self.children.get(int(msg["spawned"]))
            if child is not None:
                child.pid = int(msg["pid"])
        elif "exited" in msg:
            child = self.children.pop(int(msg["exited"]), None)
            if child is not None:
                child.returncode = int(msg["returncode"])

    @property
    def alive(self) -> bool:
        return not self.dead and self.refused is None and self.proc.poll() is None

    def request(self, msg: dict[str, Any]) -> bool:
        """Send one request; False when the server is gone."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    def spawn(self, argv: list[str], env: dict[str, str], log: str | None) -> ForkedProcess | None:
        """Ask for a worker running `argv`; returns at once (the fork happens once the
        server's imports are done). None when the server can no longer fork."""
        with self.cond:
            if not self.alive:
                return None
            self._next += 1
            child = ForkedProcess(self, self._next)
            self.children[child.rid] = child
        if not self.request({"spawn": child.rid, "argv": argv, "env": env, "log": log}):
            with self.cond:
                self.children.pop(child.rid, None)
            return None
        return child

    def kill_if_unused(self) -> bool:
        """Kill the server if it has forked nothing yet (it may still be importing):
        nothing it was asked for has run, so nothing needs stopping, and a run that
        fails early (bad input) need not wait for torch to import. True if it did."""
        with self.cond:
            if self.forked:
                return False
        self.proc.kill()
        self.proc.wait()
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server (its children should have exited already)."""
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    code = main()
    # Unloading torch and transformers takes seconds that a stopping run would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
