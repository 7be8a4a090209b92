"""/v1/jobs: the native API, genqueue's own terms (jobs, items, result lines), over the
same functions as the command line and the Python client."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask

from genqueue import formats
from genqueue.api.deps import ApiContext, Caller, Ctx, IdempotencyKey, scope
from genqueue.api.errors import ERROR_RESPONSES, BadRequest
from genqueue.api.limits import room_for
from genqueue.api.submissions import offered, webhook_url
from genqueue.api.uploads import read_json, receive
from genqueue.durations import parse_deadline
from genqueue.params import GenerationParams, describe_validation_error
from genqueue.scheduler import exports
from genqueue.scheduler.dispatch import Dispatcher
from genqueue.scheduler.submit import JobSpec, submit_job
from genqueue.storage import batches, lifecycle, outbox
from genqueue.storage.db import aware, utcnow
from genqueue.storage.dispatch import queued_tasks
from genqueue.storage.errors import JobNotFound
from genqueue.storage.loading import BATCH_PREFIX
from genqueue.storage.models import Job, JobState, ResultStatus
from genqueue.storage.retry import RETRYABLE, retry_items
from genqueue.storage.status import JobCounts, JobView, list_jobs, token_usage, view_job

router = APIRouter(prefix="/v1/jobs", tags=["Jobs"], responses=ERROR_RESPONSES)

#: Records one JSON request may carry inline (larger inputs: upload a file).
MAX_INLINE_RECORDS = 100_000


class JobCreate(BaseModel):
    """A job spec (the options of `genqueue submit`), with inline `records` when the
    request is JSON. As multipart, the spec goes in the `spec` field and the input in
    `file` (JSONL, CSV or Parquet)."""

    # Strict: `"priority": true` or `"chunk_size": "10"` is a mistake to report, not coerce.
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: str = Field("generate", max_length=32)
    model: str | None = Field(None, max_length=200)
    template: str | None = Field(None, max_length=100_000)
    params: dict[str, Any] = Field(default_factory=dict)
    defaults: dict[str, str] = Field(default_factory=dict)
    chunk_size: int | None = Field(None, ge=1, le=100_000)
    priority: int = Field(5, ge=0, le=9)
    metadata: dict[str, Any] = Field(default_factory=dict)
    deadline: str | None = Field(None, max_length=64, description="30m, 24h, 2d or ISO time")
    truncate: bool = False
    reuse: bool = Field(False, description="Copy results of identical items that already succeeded")
    chat: bool = False
    system: str | None = Field(None, max_length=100_000)
    format: str | None = Field(None, max_length=16, description="jsonl, csv, parquet, openai")
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        description="POSTed a signed event when the job ends (default: the tenant's endpoint)",
    )
    records: list[dict[str, Any]] | None = Field(None, max_length=MAX_INLINE_RECORDS)


_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "spec": {"type": "string", "description": "JobCreate as JSON"},
                    },
                }
            },
        },
    }
}


def _deadline(text: str | None) -> datetime | timedelta | None:
    try:
        return parse_deadline(text)
    except ValueError as exc:
        raise BadRequest(f"deadline: {exc}", param="deadline") from None


def _spec(ctx: ApiContext, caller: Caller, body: JobCreate, key: str | None) -> JobSpec:
    try:
        params = GenerationParams.model_validate(body.params)
    except ValidationError as exc:
        raise BadRequest(f"params: {describe_validation_error(exc)}", param="params") from None
    return JobSpec(
        kind=body.kind,
        model=body.model,
        params=params,
        template=body.template,
        defaults=body.defaults,
        chunk_size=body.chunk_size or ctx.settings.chunk_size,
        task_tokens=ctx.settings.task_tokens,
        priority=body.priority,
        metadata=body.metadata,
        deadline=_deadline(body.deadline),
        idempotency_key=key,
        truncate=body.truncate,
        reuse=body.reuse,
        chat=body.chat,
        system=body.system,
        tenant=caller.tenant,
        offered=offered(ctx),
        limits=ctx.settings.input_limits(),
        webhook_url=webhook_url(ctx, caller.tenant, body.webhook_url, field="webhook_url"),
    )


def _count_rows(path: Path, fmt: str | None, lines: int) -> int:
    if fmt == "parquet" or path.suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception:
            return lines  # unreadable: the submission says why
    return lines


@router.post("", openapi_extra=_CREATE_BODY, status_code=201)
async def create_job(request: Request, ctx: Ctx, caller: Caller, key: IdempotencyKey) -> Any:
    """Submit a job: JSON (the spec plus inline `records`) or multipart (`spec` and a
    `file`). Problems in the input come back as 400 with the line-numbered list."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        fd, tmp = tempfile.mkstemp(prefix="gq-upload-", dir=ctx.files_dir)
        os.close(fd)
        path = Path(tmp)
        try:
            upload = await receive(
                request,
                path,
                max_bytes=ctx.settings.api_max_upload_bytes,
                max_lines=ctx.settings.api_max_file_lines,
            )
            if upload.path is None:
                raise BadRequest("the form has no `file` field (the input)", param="file")
            body = _parse_spec(upload.fields.get("spec") or "{}")
            if body.records is not None:
                raise BadRequest("give the input as `file` or as `records`, not both")
            spec = _spec(ctx, caller, body, key)
            items = _count_rows(path, body.format, upload.lines)
            name = upload.filename or "upload"
            fmt = body.format
            if fmt is None:
                fmt = _format_of(name)
            return await run_in_threadpool(_submit, ctx, caller, spec, path, fmt, name, items)
        finally:
            path.unlink(missing_ok=True)
    raw = await read_json(
        request, max_bytes=ctx.settings.api_max_upload_bytes, limits=ctx.settings.input_limits()
    )
    body = _parse_spec(raw)
    if not body.records:
        raise BadRequest("records: give the input records (or upload a file)", param="records")
    spec = _spec(ctx, caller, body, key)
    records = body.records
    return await run_in_threadpool(_submit_records, ctx, caller, spec, records, body.format)


def _format_of(name: str) -> str | None:
    found = formats.by_path(name, "input")
    return found.name if found else None


def _parse_spec(raw: Any) -> JobCreate:
    try:
        if isinstance(raw, str):
            raw = json.loads(raw)
        return JobCreate.model_validate(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"spec is not valid JSON: {exc.msg}", param="spec") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise BadRequest(
            f"invalid job spec: {describe_validation_error(exc)}",
            param=field,
            details=[
                {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                for e in exc.errors()
            ],
        ) from None


def _submit(
    ctx: ApiContext,
    caller: Caller,
    spec: JobSpec,
    path: Path,
    fmt: str | None,
    name: str,
    items: int,
) -> dict[str, Any]:
    with room_for(ctx.store, ctx.settings, caller.tenant, items=items):
        done = submit_job(ctx.store, ctx.dispatcher, str(path), spec, fmt=fmt, input_name=name)
    return _status(ctx, caller, done.job_id)


def _submit_records(
    ctx: ApiContext,
    caller: Caller,
    spec: JobSpec,
    records: list[dict[str, Any]],
    fmt: str | None,
) -> dict[str, Any]:
    with (
        room_for(ctx.store, ctx.settings, caller.tenant, items=len(records)),
        tempfile.SpooledTemporaryFile(max_size=64 << 20) as f,
    ):
        for rec in records:
            # ASCII escapes: a record's unpaired surrogate reaches the reader, which
            # refuses it with its line number, as in an uploaded file.
            f.write(json.dumps(rec).encode() + b"\n")
        f.seek(0)
        done = submit_job(
            ctx.store, ctx.dispatcher, f, spec, fmt=fmt or "jsonl", input_name="<records>"
        )
    return _status(ctx, caller, done.job_id)


def jobs_of(ctx: ApiContext, caller: Caller, job_id: str) -> list[Job]:
    """The jobs of a job or batch id this caller may see (404 for another tenant's)."""
    tenant = scope(caller)
    if job_id.startswith(BATCH_PREFIX):
        batches.get_batch(ctx.store, job_id, tenant)
        return batches.batch_jobs(ctx.store, job_id)
    job = view_job(ctx.store, job_id).job
    if (tenant is not None and job.tenant != tenant) or job.state == JobState.SUBMITTING.value:
        raise JobNotFound(job_id)
    return [job]


def _job_dict(view: JobView, usage: Any) -> dict[str, Any]:
    j = view.job
    out = view.to_dict()
    out["model"] = str((j.options or {}).get("model_name") or j.model)
    out["provenance"] = {"model_ref": j.model, "revision": j.revision, "engine": j.engine}
    out["webhook_url"] = j.webhook_url  # its events: /v1/jobs/{id}/webhooks
    out["usage"] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    out.update(job_rate(view))
    return out


def job_rate(view: JobView) -> dict[str, Any]:
    """items/s since the job started, and the seconds left at that rate."""
    return progress_rate(view.counts, view.job.started_at, view.job.finished_at)


def progress_rate(
    counts: JobCounts, started_at: datetime | None, finished_at: datetime | None
) -> dict[str, Any]:
    """Items worked (succeeded or failed) per second since `started_at` (until
    `finished_at` or now), and the seconds left at that rate (None before the start or
    while nothing is done). Items a cancel or deadline ended do not count as work."""
    if started_at is None:
        return {"items_per_second": None, "eta_seconds": None}
    end = aware(finished_at) if finished_at else utcnow()
    elapsed = max(1e-3, (end - aware(started_at)).total_seconds())
    rate = (counts.succeeded + counts.failed) / elapsed
    left = counts.total - counts.done
    eta = 0.0 if left <= 0 else (left / rate if rate > 0 else None)
    return {
        "items_per_second": round(rate, 3),
        "eta_seconds": None if eta is None else round(eta, 1),
    }


def _status(ctx: ApiContext, caller: Caller, job_id: str) -> dict[str, Any]:
    jobs = jobs_of(ctx, caller, job_id)
    usage = token_usage(ctx.store, [j.id for j in jobs])
    if job_id.startswith(BATCH_PREFIX):
        out = batches.view_batch(ctx.store, job_id).to_dict()
        out["jobs"] = [
            _job_dict(v, token_usage(ctx.store, [v.job.id]))
            for v in batches.view_batch(ctx.store, job_id).jobs
        ]
        out["models"] = [j["model"] for j in out["jobs"]]
        out["usage"] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
        return out
    return _job_dict(view_job(ctx.store, job_id), usage)


@router.get("")
def list_jobs_route(
    ctx: Ctx,
    caller: Caller,
    state: Annotated[
        Literal[
            "queued",
            "running",
            "completed",
            "completed_with_errors",
            "failed",
            "cancelled",
            "expired",
        ]
        | None,
        Query(),
    ] = None,
    after: Annotated[
        str | None, Query(max_length=64, description="last job id of the page before")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Jobs, newest first, a page at a time."""
    views = list_jobs(ctx.store, limit=limit + 1, state=state, tenant=scope(caller), after=after)
    page = views[:limit]
    data = [_job_dict(v, token_usage(ctx.store, [v.job.id])) for v in page]
    return {
        "object": "list",
        "data": data,
        "has_more": len(views) > limit,
        "last_id": data[-1]["job_id"] if data else None,
    }


@router.get("/{job_id}")
def get_job(ctx: Ctx, caller: Caller, job_id: str) -> dict[str, Any]:
    """A job's (or batch's) state, counts, token usage, items/s, ETA, timestamps and
    provenance."""
    return _status(ctx, caller, job_id)


@router.get("/{job_id}/webhooks")
def job_webhooks(ctx: Ctx, caller: Caller, job_id: str) -> dict[str, Any]:
    """The webhook events of a job (or batch, OpenAI batches included) and every
    delivery attempt of each: time, HTTP status, error, duration."""
    jobs_of(ctx, caller, job_id)
    return {"object": "list", "data": outbox.deliveries_for_job(ctx.store, job_id)}


ResultFormat = Literal["jsonl", "csv", "parquet", "openai"]


@router.get(
    "/{job_id}/results",
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
def job_results(
    ctx: Ctx,
    caller: Caller,
    job_id: str,
    format: ResultFormat = "jsonl",
    status: Annotated[list[ResultStatus] | None, Query()] = None,
    include_pending: bool = False,
) -> Any:
    """Result lines in input order, streamed (on a running job: what is done so far)."""
    jobs_of(ctx, caller, job_id)
    wanted = frozenset(s.value for s in status) if status else None
    if include_pending and wanted is not None:
        wanted = wanted | {"pending"}
    if format == "parquet":
        fd, tmp = tempfile.mkstemp(suffix=".parquet", dir=ctx.files_dir)
        os.close(fd)
        lines = exports.iter_lines(ctx.store, job_id, include_pending=include_pending)
        if wanted is not None:
            lines = (line for line in lines if line.status in wanted)
        exports.write_parquet(iter(lines), tmp)
        return FileResponse(
            tmp,
            media_type="application/vnd.apache.parquet",
            background=BackgroundTask(os.unlink, tmp),
        )
    media = {"csv": "text/csv"}.get(format, "application/x-ndjson")
    chunks = exports.iter_text(
        ctx.store, job_id, format, statuses=wanted, include_pending=include_pending
    )
    return StreamingResponse(chunks, media_type=media)


@router.post("/{job_id}/cancel")
def cancel_job(ctx: Ctx, caller: Caller, job_id: str) -> dict[str, Any]:
    """Stop a job (or every job of a batch): nothing new starts, results so far are kept."""
    changed = [lifecycle.request_cancel(ctx.store, j.id) for j in jobs_of(ctx, caller, job_id)]
    return {**_status(ctx, caller, job_id), "cancel_requested": any(changed)}


class RetryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    statuses: list[Literal["failed", "cancelled", "expired"]] | None = None
    deadline: str | None = Field(None, max_length=64)


@router.post("/{job_id}/retry")
def retry_job(
    ctx: Ctx, caller: Caller, job_id: str, body: RetryBody | None = None
) -> dict[str, Any]:
    """Re-run a finished job's failed, cancelled and expired items (or only `statuses`),
    keeping its successes."""
    body = body or RetryBody()
    when = _deadline(body.deadline)
    deadline_at = utcnow() + when if isinstance(when, timedelta) else when
    total = 0
    for job in jobs_of(ctx, caller, job_id):
        n = retry_items(
            ctx.store, job.id, tuple(body.statuses or RETRYABLE), deadline_at=deadline_at
        )
        if n and ctx.dispatcher is not None:
            _send(ctx.dispatcher, ctx, job.id)
        total += n
    return {**_status(ctx, caller, job_id), "requeued": total}


def _send(dispatcher: Dispatcher, ctx: ApiContext, job_id: str) -> None:
    dispatcher.send(ctx.store, queued_tasks(ctx.store, job_id=job_id))
