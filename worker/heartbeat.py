"""Keeping a task's lease while it runs, and the watchdog for hung micro-batches."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from genqueue.storage import leases, workers
from genqueue.storage.claims import Claim
from genqueue.storage.db import Store

if TYPE_CHECKING:
    from genqueue.worker.runner import WorkerContext

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Extends the lease every heartbeat interval; notices when the lease was lost.

    It is also the watchdog: a micro-batch that runs past `batch_timeout_seconds` means
    an item hangs the model. Heartbeats alone would keep that lease alive forever, so the
    process exits; the lease expires, the attempt counts, and the poison item is isolated
    (the supervisor starts a fresh process)."""

    def __init__(self, ctx: WorkerContext, claim: Claim) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{claim.task_id}")
        self.ctx, self.claim = ctx, claim
        self.done = threading.Event()
        self.lost = False
        self.job_stopped = False
        self.batch_started = time.monotonic()
        #: True while this task holds the model (the watchdog ignores a task waiting
        #: for its turn).
        self.generating = False

    def run(self) -> None:
        s = self.ctx.settings
        while not self.done.wait(s.heartbeat_seconds):
            if self.generating and time.monotonic() - self.batch_started > s.batch_timeout_seconds:
                log.error(
                    "task %s: a micro-batch ran over %.0fs (an item hangs the model); "
                    "exiting so the task is retried and the item isolated",
                    self.claim.task_id,
                    s.batch_timeout_seconds,
                )
                logging.shutdown()
                os._exit(70)
            try:
                if not leases.heartbeat(self.ctx.store, self.claim, s.lease_seconds):
                    self.lost = True
                    log.warning(
                        "task %s: lease lost; stopping after this batch", self.claim.task_id
                    )
                    return
                self.job_stopped = leases.job_stop_requested(self.ctx.store, self.claim.job_id)
            except Exception as exc:  # a DB hiccup: try again next beat
                log.warning("task %s: heartbeat failed: %s", self.claim.task_id, exc)


class Presence(threading.Thread):
    """Writes this worker process's heartbeat row (storage/workers.py) every heartbeat
    interval while it runs, so the API can count the live workers of each model; the
    row is removed when the process stops."""

    def __init__(
        self, store: Store, name: str, *, queue: str, model: str, engine: str, every: float
    ) -> None:
        super().__init__(daemon=True, name="presence")
        self.store, self.worker_name = store, name
        self.queue, self.model, self.engine, self.every = queue, model, engine, every
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            try:
                workers.beat(
                    self.store,
                    self.worker_name,
                    queue=self.queue,
                    model=self.model,
                    engine=self.engine,
                )
            except Exception as exc:  # a DB hiccup: try again next beat
                log.warning("worker heartbeat failed: %s", exc)
            if self.done.wait(self.every):
                return

    def stop(self) -> None:
        self.done.set()
        try:
            workers.leave(self.store, self.worker_name)
        except Exception as exc:
            log.warning("removing the worker's heartbeat row failed: %s", exc)
