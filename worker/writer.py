"""Storing a task's micro-batch results in the background while the model generates."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from genqueue.storage.claims import Claim
from genqueue.storage.results import NewResult, write_results
from genqueue.worker.transient import retry_transient

if TYPE_CHECKING:
    from genqueue.worker.runner import WorkerContext


class Writer(threading.Thread):
    """Writes micro-batch results in the background, retrying transient DB errors.

    Each write takes everything queued by then: results are stored as soon as the
    writer is free, and micro-batches that end faster than a write commits share one
    transaction."""

    def __init__(self, ctx: WorkerContext, claim: Claim) -> None:
        super().__init__(daemon=True, name=f"writer-{claim.task_id}")
        self.ctx, self.claim = ctx, claim
        self.inbox: queue.Queue[Sequence[NewResult] | None] = queue.Queue(maxsize=64)
        self.written = self.duplicates = 0
        self.error: BaseException | None = None

    def send(self, batch: Sequence[NewResult]) -> None:
        """Queue a micro-batch (the thread starts on first use: a task that fits one
        micro-batch writes everything with its finish and never needs it)."""
        if not self.is_alive():
            self.start()
        self.inbox.put(batch)

    def close(self) -> None:
        """Wait until everything queued is written."""
        if self.is_alive():
            self.inbox.put(None)
            self.join()

    def run(self) -> None:
        closing = False
        while not closing and (first := self.inbox.get()) is not None:
            batch = list(first)
            while True:  # and whatever else is already waiting
                try:
                    more = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                batch.extend(more)
            if self.error is not None:
                continue
            try:
                w, d = retry_transient(
                    lambda b=batch: write_results(self.ctx.store, self.claim, b),
                    what=f"writing results of task {self.claim.task_id}",
                    stop=self.ctx.stop,
                )
                self.written += w
                self.duplicates += d
            except BaseException as exc:
                self.error = exc
