"""Running N worker processes: thread budgets or GPUs split between them, crashes restarted.

The supervisor never imports torch. Each child is `python -m genqueue.worker.process`,
which loads its own model copy. On CPU the cores are split evenly (OMP/MKL threads); on
GPUs each child gets its own devices through CUDA_VISIBLE_DEVICES. A child that dies is
restarted (with backoff); its task's lease expires and another worker finishes it.

With `WorkerSpec.fork_server` (`genqueue run` and `genqueue worker`, by the
`fork_server` setting), CPU workers of the hf and dry-run engines are forked from one
process that imported everything once (forkserver.py) instead of each importing torch
and transformers on the same cores; if that process cannot serve, children are exec'd.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from genqueue.worker.engines import engine_module
from genqueue.worker.errors import EXIT_ENGINE_ERROR
from genqueue.worker.forkserver import ForkedProcess, ForkServer, die_with_parent
from genqueue.workeropts import WorkerOptions

log = logging.getLogger(__name__)

#: A process that ran this long before it exited is not crash-looping: its restart
#: backoff starts over.
STABLE_SECONDS = 60.0


@dataclass(frozen=True)
class WorkerSpec:
    """What to supervise: `processes` model processes, each run with `options`."""

    options: WorkerOptions
    processes: int = 1
    loglevel: str = "WARNING"
    #: The children's environment on top of this process's own (typically
    #: Settings.child_env(): the URLs and every setting).
    env: dict[str, str] = field(default_factory=dict)
    #: When set, each process writes its output to `worker-<slot>.log` there instead of
    #: the terminal (the embedded run keeps the terminal for its progress bar).
    log_dir: str | None = None
    #: Fork CPU workers from one process that imported torch, transformers and the
    #: worker once (see forkserver.py), when the engine allows it: start-up then costs
    #: one import, not one per process.
    fork_server: bool = False


#: Engines whose workers may be forked from a fork server, which imports the worker
#: and the engine's module for them. Others (deepspeed, vllm, your own) start
#: processes or devices of their own.
FORKABLE_ENGINES = ("hf", "dry-run")


def fork_server_modules(engine: str) -> list[str]:
    """What a fork server imports before it forks workers of `engine`."""
    return ["genqueue.worker.process", engine_module(engine)]


def visible_gpus() -> list[str]:
    """GPU ids this machine exposes, without importing torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


class Supervisor:
    def __init__(self, spec: WorkerSpec) -> None:
        opts = spec.options
        use_gpu = opts.device.startswith("cuda") or (
            opts.device == "auto" and opts.engine != "dry-run"
        )
        self.gpus = visible_gpus() if use_gpu else []
        if spec.processes <= 0:  # auto: one process per GPU group, else one
            n = len(self.gpus) // opts.tensor_parallel if self.gpus else 1
            spec = replace(spec, processes=max(1, n))
        self.spec = spec
        self.children: list[subprocess.Popen[bytes] | ForkedProcess | None]
        self.children = [None] * spec.processes
        self.server: ForkServer | None = None
        self.restarts = [0] * spec.processes
        self.spawned = [0] * spec.processes
        self.started = [0.0] * spec.processes
        self.next_start = [0.0] * spec.processes
        self.stopping = False
        #: Why a process could not load its model (it exited with EXIT_ENGINE_ERROR), the
        #: last time one did; None while none has.
        self.engine_error: str | None = None
        cores = os.cpu_count() or 1
        self.threads = opts.threads or max(1, cores // max(1, spec.processes))

    def _env(self, slot: int) -> dict[str, str]:
        env = {**os.environ, **self.spec.env}
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        env["TOKENIZERS_PARALLELISM"] = "false"
        # Model-load progress bars from every process would drown the job's own progress.
        env.setdefault("TRANSFORMERS_VERBOSITY", "error")
        env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if self.gpus:
            tp = self.spec.options.tensor_parallel
            mine = [self.gpus[(slot * tp + k) % len(self.gpus)] for k in range(tp)]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        return env

    def _spawn(self, slot: int) -> None:
        s = self.spec
        self.spawned[slot] += 1
        self.started[slot] = time.monotonic()
        # Unique per process, restarts included: leases and attempts record this name,
        # and a restarted process must not pass for the one that died.
        name = f"gq-{os.getpid()}-{slot}.{self.spawned[slot]}@{os.uname()[1]}"
        options = s.options.model_copy(update={"threads": self.threads})
        args = [*options.to_args(), "--loglevel", s.loglevel, "--name", name]
        cmd = [sys.executable, "-m", "genqueue.worker.process", *args]
        log_file = None
        if s.log_dir:
            Path(s.log_dir).mkdir(parents=True, exist_ok=True)
            log_file = str(self.log_path(slot))
        if self.server is not None:
            forked = self.server.spawn(args, self._env(slot), log_file)
            if forked is not None:
                self.children[slot] = forked
                return
        out = open(log_file, "ab") if log_file else None  # noqa: SIM115 (the child owns it)
        self.children[slot] = subprocess.Popen(
            cmd,
            env=self._env(slot),
            preexec_fn=die_with_parent,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )
        if out is not None:
            out.close()

    def log_path(self, slot: int) -> Path:
        return Path(self.spec.log_dir or ".") / f"worker-{slot}.log"

    def log_tail(self, slot: int = 0, lines: int = 25) -> str:
        """The end of a process's log (to explain why it exited)."""
        try:
            text = self.log_path(slot).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def logged_engine_error(self, slot: int) -> str:
        """The message a process logged when its model could not be loaded (see
        worker/process.py), from its log; a pointer to where it is otherwise."""
        if not self.spec.log_dir:  # `genqueue worker`: the processes write to its output
            return "the reason is in the processes' output above"
        tail = self.log_tail(slot, lines=60)
        marker = " genqueue worker: "
        at = tail.rfind(marker)
        if at < 0:
            return f"see {self.log_path(slot)}"
        return tail[at + len(marker) :].strip()

    def _forking(self) -> bool:
        s = self.spec
        return (
            s.fork_server
            and sys.platform == "linux"
            and not self.gpus
            and s.options.engine in FORKABLE_ENGINES
        )

    def prepare(self) -> None:
        """Start the fork server, if this supervisor will fork its workers, without
        starting any worker: its imports can begin before the workers' settings (the
        broker and database URLs in `spec.env`) are known. `start` calls it too."""
        if self._forking() and self.server is None:
            log = None
            if self.spec.log_dir:
                Path(self.spec.log_dir).mkdir(parents=True, exist_ok=True)
                log = str(Path(self.spec.log_dir) / "forkserver.log")
            # numpy's OpenBLAS would start a thread per core at import, and a server
            # with threads cannot fork safely (the workers' torch has its own pool).
            env = {**self._env(0), "OPENBLAS_NUM_THREADS": "1"}
            opts = self.spec.options
            self.server = ForkServer(fork_server_modules(opts.engine), opts.to_args(), env, log)

    def start(self) -> None:
        self.prepare()
        for slot in range(self.spec.processes):
            self._spawn(slot)

    def pids(self) -> list[int]:
        return [
            c.pid for c in self.children if c is not None and c.pid is not None and c.poll() is None
        ]

    def poll(self) -> None:
        """Restart children that exited, with exponential backoff per slot."""
        if self.stopping:
            return
        now = time.monotonic()
        for slot, child in enumerate(self.children):
            if child is None or child.poll() is None:
                continue
            if child.pid is None:
                # The fork server went away before forking it: it never ran, so this
                # is no crash; exec it instead, now.
                log.warning(
                    "worker fork server gone (%s); starting processes directly",
                    self.server.refused if self.server else "?",
                )
                self._spawn(slot)
                continue
            if self.next_start[slot] == 0.0:
                # The backoff is for crash loops. A process that lived a while before it
                # died (a poison item, the OOM killer, a kill) starts over from the
                # shortest delay, else a week of rare crashes ends in 30 s restarts.
                if now - self.started[slot] >= STABLE_SECONDS:
                    self.restarts[slot] = 0
                self.restarts[slot] += 1
                delay = min(30.0, 0.5 * 2 ** min(self.restarts[slot], 6))
                why = ""
                if child.returncode == EXIT_ENGINE_ERROR:
                    self.engine_error = self.logged_engine_error(slot)
                    why = f" (it could not load its model: {self.engine_error})"
                log.warning(
                    "worker process %d exited with %s%s; restarting in %.1fs",
                    child.pid,
                    child.returncode,
                    why,
                    delay,
                )
                self.next_start[slot] = now + delay
            elif now >= self.next_start[slot]:
                self.next_start[slot] = 0.0
                self._spawn(slot)

    def signal_stop(self) -> None:
        """Ask every child to stop (SIGTERM: finish or release the task in flight)
        without waiting; `stop` then waits for them."""
        self.stopping = True
        for child in self.children:
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (finish or release the task in flight), then SIGKILL after `grace`."""
        if self.server is not None:
            self.server.kill_if_unused()
        self.signal_stop()
        deadline = time.monotonic() + grace
        for child in self.children:
            if child is None:
                continue
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self.server is not None:
            self.server.close()

    def run_forever(self) -> int:
        """Foreground mode for `genqueue worker`: supervise until SIGTERM/SIGINT."""

        def _stop(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self.start()
        while not self.stopping:
            if self.cannot_load():
                log.error(
                    "genqueue worker: no process could load model %s: %s",
                    self.spec.options.model,
                    self.engine_error,
                )
                self.stop()
                return 2
            self.poll()
            time.sleep(0.5)
        self.stop()
        return 0

    def cannot_load(self) -> bool:
        """Whether every process has exited because it could not load the model (a
        missing or damaged model, a bad option): restarting them would only repeat it."""
        return self.engine_error is not None and all(
            c is not None and c.poll() == EXIT_ENGINE_ERROR for c in self.children
        )
