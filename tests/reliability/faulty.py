"""A fault-injecting engine for reliability tests, loaded by workers as
`--engine tests.reliability.faulty:FaultyEngine`.

It is the dry-run engine (output = the prompt's first words) plus faults chosen by the
prompt text, so a test decides which item misbehaves and how:

- every micro-batch sleeps `GQ_FAULT_DELAY` seconds per item (default 0.005), so tasks
  take long enough for a kill to land in the middle of one;
- a prompt containing `CRASH` SIGKILLs the worker process (a segfault, the OOM killer);
- a prompt containing `HANG` never returns (a stuck kernel, a deadlock);
- a prompt containing `RAISE` makes `generate` raise (a model error on that item);
- `GQ_FAULT_MAX_CONTEXT` gives the model a context of that many words, so over-long
  prompts are rejected (`prompt_too_long`) or truncated, as with a real model.

When `GQ_FAULT_LOG` is set, each process appends `<pid> start <n> <unix time>` to it as
a micro-batch of n items starts and `<pid> end <n> <unix time>` as it ends, so a test can
tell whether a process is generating, and when micro-batches ran.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from dataclasses import replace

from genqueue.worker.engines.base import GenRequest, GenResult, ModelInfo
from genqueue.worker.engines.dryrun import DryRunEngine
from genqueue.workeropts import WorkerOptions


class FaultyEngine(DryRunEngine):
    info: ModelInfo

    def __init__(self, options: WorkerOptions) -> None:
        super().__init__(
            options.model_copy(update={"revision": options.revision or "faulty-rev-1"})
        )
        self.delay = float(os.environ.get("GQ_FAULT_DELAY", "0.005"))
        max_ctx = os.environ.get("GQ_FAULT_MAX_CONTEXT")
        self.info = replace(
            self.info, engine="faulty", max_context=int(max_ctx) if max_ctx else None
        )
        self.log_path = os.environ.get("GQ_FAULT_LOG")

    def _log(self, event: str, n: int) -> None:
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(f"{os.getpid()} {event} {n} {time.time():.6f}\n")

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        self._log("start", len(requests))
        for req in requests:
            if "CRASH" in req.prompt:
                os.kill(os.getpid(), signal.SIGKILL)
            if "HANG" in req.prompt:
                while True:
                    time.sleep(3600)
            if "RAISE" in req.prompt:
                raise RuntimeError("injected model failure")
        time.sleep(self.delay * len(requests))
        out = super().generate(requests)
        self._log("end", len(requests))
        return out
