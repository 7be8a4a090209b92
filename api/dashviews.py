"""What the dashboard's pages show, as plain dicts built from storage reads: one job's
or batch's progress row, a job's page, the workers page. The templates only render
these (api/templates), and the pages' live refresh fetches the same pages again."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from genqueue.api.deps import ApiContext, scope
from genqueue.api.jobs import progress_rate
from genqueue.storage import batches, progress, workers
from genqueue.storage.db import aware, utcnow
from genqueue.storage.loading import BATCH_PREFIX
from genqueue.storage.models import Job, JobState
from genqueue.storage.status import JobCounts, JobView, list_jobs, token_usage, view_job
from genqueue.storage.tenants import Principal
from genqueue.workeropts import start_command

#: Jobs and batches the list page shows (newest first).
LIST_LIMIT = 50
#: The states the list page filters by.
STATES = tuple(s.value for s in JobState if s is not JobState.SUBMITTING)
LIVE = (JobState.QUEUED.value, JobState.RUNNING.value)


def model_name(job: Job) -> str:
    """The name a job's model was asked for by (an offered name), else its reference's
    last part."""
    return str((job.options or {}).get("model_name") or Path(job.model).name or job.model)


def duration(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `12s`; an empty string for None."""
    if seconds is None:
        return ""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def stamp(value: datetime | None) -> str:
    return aware(value).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def progress_row(
    counts: JobCounts,
    *,
    state: str,
    started_at: datetime | None,
    finished_at: datetime | None,
    completion_tokens: int,
) -> dict[str, Any]:
    """Counts, bar widths, items/s, tokens/s and ETA of a job or batch."""
    rate = progress_rate(counts, started_at, finished_at)
    tokens_per_second = None
    if started_at is not None:
        end = aware(finished_at) if finished_at else utcnow()
        elapsed = max(1e-3, (end - aware(started_at)).total_seconds())
        tokens_per_second = round(completion_tokens / elapsed, 1)
    total = max(1, counts.total)
    eta = rate["eta_seconds"]
    return {
        "state": state,
        "live": state in LIVE,
        "counts": counts.to_dict(),
        "done": counts.done,
        "total": counts.total,
        "pct": round(100 * counts.done / total, 1),
        "bar_ok": round(100 * counts.succeeded / total, 2),
        "bar_failed": round(100 * counts.failed / total, 2),
        "bar_other": round(100 * (counts.cancelled + counts.expired) / total, 2),
        "items_per_second": rate["items_per_second"],
        "tokens_per_second": tokens_per_second,
        "eta": duration(eta) if state in LIVE else "",
        "failures": counts.failed,
    }


def job_row(ctx: ApiContext, view: JobView) -> dict[str, Any]:
    j = view.job
    usage = token_usage(ctx.store, [j.id])
    return {
        "id": j.id,
        "tenant": j.tenant,
        "kind": j.kind,
        "model": model_name(j),
        "batch_id": j.batch_id,
        "created": stamp(j.created_at),
        **progress_row(
            view.counts,
            state=j.state,
            started_at=j.started_at,
            finished_at=j.finished_at,
            completion_tokens=usage.completion_tokens,
        ),
    }


def batch_row(ctx: ApiContext, view: batches.BatchView) -> dict[str, Any]:
    jobs = [v.job for v in view.jobs]
    usage = token_usage(ctx.store, [j.id for j in jobs])
    started = [j.started_at for j in jobs if j.started_at is not None]
    finished = [j.finished_at for j in jobs if j.finished_at is not None]
    return {
        "id": view.batch.id,
        "tenant": view.batch.tenant,
        "models": ", ".join(model_name(j) for j in jobs),
        "jobs": len(jobs),
        "created": stamp(view.batch.created_at),
        **progress_row(
            view.counts,
            state=view.state,
            started_at=min(started, key=aware) if started else None,
            finished_at=max(finished, key=aware) if len(finished) == len(jobs) else None,
            completion_tokens=usage.completion_tokens,
        ),
    }


def warnings_for(ctx: ApiContext, job_ids: list[str]) -> list[dict[str, str]]:
    """A line per live job whose model no live worker serves, with the command that
    starts one."""
    found = workers.unserved_jobs(ctx.store, job_ids, within_seconds=ctx.settings.lease_seconds)
    return [
        {
            "job_id": u.job_id,
            "model": u.model,
            "command": start_command(
                u.model,
                revision=u.revision,
                engine=u.engine,
                trust_remote_code=u.trust_remote_code,
            ),
        }
        for u in found
    ]


def list_page(ctx: ApiContext, caller: Principal, state: str | None) -> dict[str, Any]:
    """The index: jobs (filtered by state) and batches, newest first."""
    tenant = scope(caller)
    views = list_jobs(ctx.store, limit=LIST_LIMIT, state=state, tenant=tenant)
    rows = [job_row(ctx, v) for v in views]
    batch_rows = [
        batch_row(ctx, b) for b in batches.recent_batches(ctx.store, tenant=tenant, limit=20)
    ]
    if state:
        batch_rows = [b for b in batch_rows if b["state"] == state]
    return {
        "jobs": rows,
        "batches": batch_rows,
        "state": state,
        "states": STATES,
        "warnings": warnings_for(ctx, [r["id"] for r in rows if r["live"]]),
    }


def job_page(ctx: ApiContext, jobs: list[Job], page_id: str) -> dict[str, Any]:
    """A job's page (or a batch's: its jobs, their summed counts); `jobs` is not empty."""
    views = [view_job(ctx.store, j.id) for j in jobs]
    rows = [job_row(ctx, v) for v in views]
    is_batch = page_id.startswith(BATCH_PREFIX)
    head = (
        batch_row(ctx, batches.view_batch(ctx.store, page_id))
        if is_batch
        else {**rows[0], "models": rows[0]["model"]}
    )
    first = views[0].job
    chart = chart_data(progress.throughput(ctx.store, first.id)) if not is_batch else None
    recent = [r for j in jobs for r in progress.recent_results(ctx.store, j.id, limit=15)]
    errors = [r for j in jobs for r in progress.recent_results(ctx.store, j.id, failed=True)]
    return {
        "id": page_id,
        "is_batch": is_batch,
        "head": head,
        "jobs": rows,
        "spec": None if is_batch else spec_of(views[0]),
        "runs": [] if is_batch else progress.attempts_by_worker(ctx.store, first.id),
        "chart": chart,
        "recent": sorted(recent, key=lambda r: r.created_at or utcnow(), reverse=True)[:15],
        "errors": sorted(errors, key=lambda r: r.created_at or utcnow(), reverse=True)[:20],
        "warnings": warnings_for(ctx, [j.id for j in jobs]),
        "finished": all(JobState(v.job.state).final for v in views),
    }


def spec_of(view: JobView) -> list[tuple[str, Any]]:
    """The job's spec and provenance, as (label, value) rows."""
    d = view.to_dict()
    j = view.job
    rows: list[tuple[str, Any]] = [
        ("kind", d["kind"]),
        ("model", model_name(j)),
        ("model reference", j.model),
        ("revision", j.revision or ""),
        ("engine", j.engine or ""),
        ("queue", j.queue),
        ("priority", d["priority"]),
        ("chunk size", d["chunk_size"]),
        ("input", d["input"] or ""),
        ("template", d["template"] or ""),
        ("params", d["params"] or {}),
        ("metadata", d["metadata"] or {}),
        ("chat", "yes" if d["chat"] else "no"),
        ("tenant", d["tenant"]),
        ("created", stamp(j.created_at)),
        ("started", stamp(j.started_at)),
        ("finished", stamp(j.finished_at)),
        ("deadline", stamp(j.deadline_at)),
        ("duplicate executions", d["duplicate_executions"]),
        ("error", d["error"] or ""),
    ]
    return [(k, v) for k, v in rows if v not in ("", None, {})]


#: The throughput chart's drawing area (SVG user units).
CHART_W, CHART_H = 600, 140


def chart_data(t: progress.Throughput) -> dict[str, Any] | None:
    """The throughput chart as SVG polyline points (items/s per bucket)."""
    if t.start is None or not t.counts:
        return None
    rates = [c / t.width for c in t.counts]
    top = max(rates) or 1.0
    n = len(rates)
    step = CHART_W / max(1, n - 1) if n > 1 else CHART_W
    points = [
        (round(i * step, 1), round(CHART_H - CHART_H * r / top, 1)) for i, r in enumerate(rates)
    ]
    if n == 1:
        points = [(0.0, points[0][1]), (float(CHART_W), points[0][1])]
    return {
        "points": " ".join(f"{x},{y}" for x, y in points),
        "area": f"0,{CHART_H} " + " ".join(f"{x},{y}" for x, y in points) + f" {CHART_W},{CHART_H}",
        "peak": round(top, 2),
        "span": duration(t.width * n),
        "width": CHART_W,
        "height": CHART_H,
        "buckets": n,
        "bucket_seconds": round(t.width, 2),
    }


def workers_page(ctx: ApiContext, caller: Principal) -> dict[str, Any]:
    """Workers per model with what each holds, and the queues' depth (a tenant sees its
    own queued work, and which job a worker runs only when it is its own)."""
    within = ctx.settings.lease_seconds
    tenant = scope(caller)
    rows = []
    for w in workers.list_workers(ctx.store, within_seconds=within):
        tasks = [
            {
                "task_id": t.task_id,
                "job_id": t.job_id if tenant is None or t.tenant == tenant else None,
                "done": t.done,
                "n_items": t.n_items,
            }
            for t in w.tasks
        ]
        rows.append(
            {
                "name": w.name,
                "host": w.host,
                "model": Path(w.model).name or w.model,
                "model_ref": w.model,
                "queue": w.queue,
                "engine": w.engine or "",
                "live": w.live,
                "heartbeat_age": round(w.heartbeat_age, 1),
                "items_per_second": w.items_per_second,
                "tasks": tasks,
                "started": stamp(w.started_at),
            }
        )
    queues = [
        {
            "queue": q.queue,
            "model": Path(q.model).name or q.model,
            "model_ref": q.model,
            "revision": q.revision,
            "waiting": q.waiting,
            "running": q.running,
            "live_workers": q.live_workers,
            "unserved": q.unserved,
            "command": start_command(q.model, revision=q.revision) if q.unserved else "",
        }
        for q in workers.queue_depths(ctx.store, within_seconds=within, tenant=tenant)
    ]
    return {"workers": rows, "queues": queues, "live_seconds": within}
