"""The reconciler: the loop that makes SQL, not Redis, the source of truth.

Every few seconds it (1) re-queues tasks whose lease expired (a worker died), isolating
poison items past the attempt cap; (2) sends tasks that were never sent (a submitter
crashed between commit and enqueue, or a worker released a task); (3) rebuilds the
queues when Redis lost its data; (4) expires jobs past their deadline; (5) finalises
jobs with no open task; (6) removes submissions abandoned mid-load, and fails API
batches whose submission died with them. Running several
reconcilers at once is safe, only wasteful.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from genqueue.scheduler.dispatch import Dispatcher
from genqueue.settings import Settings
from genqueue.storage import batches, dispatch, lifecycle, loading, recovery
from genqueue.storage.db import Store, as_utc, utcnow

log = logging.getLogger(__name__)


@dataclass
class TickReport:
    requeued: int = 0
    sent: int = 0
    rebuilt: int = 0
    expired_jobs: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    finalized: dict[str, str] = field(default_factory=dict)


class Reconciler:
    def __init__(self, store: Store, dispatcher: Dispatcher, settings: Settings) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.settings = settings

    def tick(self) -> TickReport:
        report = TickReport()
        s = self.settings
        recovered = recovery.recover_expired(self.store, max_attempts=s.max_attempts)
        report.requeued = len(recovered)
        if self.dispatcher.broker_lost_data():
            log.warning("the broker lost its data; rebuilding every queue from SQL")
            todo = dispatch.queued_tasks(self.store)
            report.rebuilt = self.dispatcher.send(self.store, todo)
        # Recovered (re-queued or split) tasks go at once, at the top priority: their
        # work was already under way, and at the back of a long queue a killed worker's
        # task would wait behind the whole rest of the job.
        again = set(recovered)
        urgent = [
            (t, q, 9)
            for t, q, _ in dispatch.tasks_to_send(self.store, older_than=utcnow())
            if t in again
        ]
        self.dispatcher.send(self.store, urgent)
        cutoff = utcnow() - timedelta(seconds=s.dispatch_grace_seconds)
        todo = dispatch.tasks_to_send(self.store, older_than=cutoff)
        report.sent = len(urgent)
        report.sent += self.dispatcher.send(self.store, todo)
        report.sent += self._refill_empty_queues()
        self._expire_and_finalize(report)
        silent_since = utcnow() - timedelta(seconds=s.submit_stall_seconds)
        for job_id in loading.abandoned_submissions(self.store, silent_since=silent_since):
            log.warning(
                "job %s: its submission stopped mid-load %.0fs ago (the submitter died?); "
                "removing the half-loaded job",
                job_id,
                s.submit_stall_seconds,
            )
            lifecycle.delete_job(self.store, job_id)
            report.abandoned.append(job_id)
        for batch_id in batches.fail_abandoned(self.store, created_before=silent_since):
            log.warning("batch %s: its submission stopped (the API server died?)", batch_id)
            report.abandoned.append(batch_id)
        return report

    def _refill_empty_queues(self) -> int:
        """Messages can vanish without Redis restarting (a queue deleted by hand, an
        eviction). When a queue is empty but SQL has had tasks waiting on it for a
        while, send those again; a duplicate message is harmless (claims are atomic)."""
        stale_before = utcnow() - timedelta(seconds=max(60.0, self.settings.lease_seconds * 2))
        sent = 0
        for queue in dispatch.live_queues(self.store):
            if self.dispatcher.depth(queue) > 0:
                continue
            stale = dispatch.queued_tasks(self.store, queue=queue, sent_before=stale_before)
            if stale:
                sent += self.dispatcher.send(self.store, stale)
        return sent

    def _expire_and_finalize(self, report: TickReport) -> None:
        now = utcnow()
        for job_id, deadline in lifecycle.live_jobs(self.store):
            dl = as_utc(deadline)
            if dl is not None and dl <= now and lifecycle.expire_job(self.store, job_id):
                report.expired_jobs.append(job_id)
                continue
            state = lifecycle.finalize_job(self.store, job_id)
            if state:
                report.finalized[job_id] = state

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set; errors are logged and retried next tick (a database
        or broker outage must not kill the loop)."""
        delay = self.settings.reconcile_interval
        while not stop.is_set():
            try:
                self.tick()
                delay = self.settings.reconcile_interval
            except Exception as exc:  # the loop must outlive outages
                log.warning("reconciler tick failed (%s: %s); retrying", type(exc).__name__, exc)
                delay = min(delay * 2, 30.0)
            stop.wait(delay)
