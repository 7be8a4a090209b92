"""/metrics: Prometheus's text format, from SQL at scrape time (storage/metrics.py), so
that every API process reports the whole deployment (all workers, all hosts).

It needs an admin API key (`Authorization: Bearer <key>`), unless the operator opted
in to an open endpoint with GENQUEUE_METRICS_PUBLIC=true (a private network), or the
server has no key at all (it then listens on loopback only, and serves everyone).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from genqueue.api.deps import ApiContext, Ctx, principal
from genqueue.api.errors import ApiError
from genqueue.storage import metrics, tenants

router = APIRouter(tags=["Metrics"])
_bearer = HTTPBearer(auto_error=False, description="An admin API key")


class Forbidden(ApiError):
    """Raised when a key that is not an admin key asks for /metrics (403)."""

    status, code, type = 403, "permission_denied", "invalid_request_error"


class SqlCollector(Collector):
    """Builds every metric family from one `metrics.snapshot` per scrape."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.finished = metrics.FinishedJobs()

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        snap = metrics.snapshot(
            self.ctx.store, live_within=self.ctx.settings.lease_seconds, finished=self.finished
        )
        jobs = GaugeMetricFamily("genqueue_jobs", "Jobs by state", labels=["state"])
        for state, n in sorted(snap.jobs.items()):
            jobs.add_metric([state], n)
        yield jobs
        items = GaugeMetricFamily(
            "genqueue_items",
            "Items by status (pending: no result yet) and model",
            labels=["model", "status"],
        )
        for (model, status), n in sorted(snap.items.items()):
            items.add_metric([model, status], n)
        yield items
        prompt = CounterMetricFamily(
            "genqueue_prompt_tokens", "Prompt tokens of stored results", labels=["model"]
        )
        generated = CounterMetricFamily(
            "genqueue_generated_tokens", "Generated tokens of stored results", labels=["model"]
        )
        for model, (p, c) in sorted(snap.tokens.items()):
            prompt.add_metric([model], p)
            generated.add_metric([model], c)
        yield prompt
        yield generated
        labels = ["queue", "model"]
        depth = GaugeMetricFamily(
            "genqueue_queue_depth_tasks", "Tasks waiting for a worker", labels=labels
        )
        depth_items = GaugeMetricFamily(
            "genqueue_queue_depth_items", "Items in tasks waiting for a worker", labels=labels
        )
        running = GaugeMetricFamily("genqueue_tasks_running", "Tasks leased", labels=labels)
        for key, (tasks, n_items, n_running) in sorted(snap.queues.items()):
            depth.add_metric(list(key), tasks)
            depth_items.add_metric(list(key), n_items)
            running.add_metric(list(key), n_running)
        yield depth
        yield depth_items
        yield running
        workers = GaugeMetricFamily(
            "genqueue_workers_live",
            "Worker processes with a recent heartbeat",
            labels=labels,
        )
        for key, n in sorted(snap.workers.items()):
            workers.add_metric(list(key), n)
        yield workers
        yield CounterMetricFamily(
            "genqueue_lease_expiries",
            "Attempts whose lease expired (their worker died or hung)",
            value=snap.lease_expiries,
        )
        yield CounterMetricFamily(
            "genqueue_requeues",
            "Attempts that ran a task again after an earlier attempt ended unfinished",
            value=snap.requeues,
        )
        yield CounterMetricFamily(
            "genqueue_duplicate_executions",
            "Results computed again and dropped (first writer wins)",
            value=snap.duplicate_executions,
        )
        hist = HistogramMetricFamily(
            "genqueue_microbatch_seconds",
            "Duration of the micro-batches whose results are stored",
            labels=["model"],
        )
        for model, h in sorted(snap.batch_latency.items()):
            bounds = zip(metrics.BATCH_BUCKETS, h.buckets, strict=True)
            buckets = [(repr(b), float(n)) for b, n in bounds]
            hist.add_metric([model], [*buckets, ("+Inf", float(h.count))], h.sum_seconds)
        yield hist
        deliveries = CounterMetricFamily(
            "genqueue_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, http_error, no_response)",
            labels=["outcome"],
        )
        for outcome, n in sorted(snap.webhook_deliveries.items()):
            deliveries.add_metric([outcome], n)
        yield deliveries
        events = GaugeMetricFamily(
            "genqueue_webhook_events", "Webhook events by state", labels=["state"]
        )
        for state, n in sorted(snap.webhook_events.items()):
            events.add_metric([state], n)
        yield events
        yield GaugeMetricFamily(
            "genqueue_metrics_scrape_seconds",
            "Time this scrape spent reading SQL",
            value=time.perf_counter() - started,
        )


def registry(ctx: ApiContext) -> CollectorRegistry:
    """A registry of this app's own (never the process-global one); the app keeps it
    (`app.state.metrics`), so final jobs' figures are read once."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SqlCollector(ctx))
    return reg


@router.get("/metrics", include_in_schema=False)
def metrics_route(
    request: Request,
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Response:
    """Prometheus metrics (text format 0.0.4)."""
    if not ctx.settings.metrics_public:
        caller = principal(ctx, credentials)
        if not caller.admin and tenants.any_key(ctx.store):
            raise Forbidden(
                "/metrics needs an admin API key (`genqueue keys create --admin`), or "
                "GENQUEUE_METRICS_PUBLIC=true on the server for a private network"
            )
    reg = getattr(request.app.state, "metrics", None)
    if reg is None:
        reg = request.app.state.metrics = registry(ctx)
    return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)
