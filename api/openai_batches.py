"""/v1/batches: OpenAI batches, each made from an uploaded file as a genqueue batch (one
job per model its lines name), with the status mapping of openai_status.py."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Annotated

from fastapi import APIRouter, Query

from genqueue.api import openai_status
from genqueue.api.deps import ApiContext, Caller, Ctx, IdempotencyKey, scope
from genqueue.api.errors import ERROR_RESPONSES, BadRequest
from genqueue.api.limits import room_for
from genqueue.api.schemas import BatchCreate, BatchList, BatchObject
from genqueue.api.submissions import cancel_jobs, submit_batch_file, webhook_url
from genqueue.scheduler.openai_format import ENDPOINTS
from genqueue.scheduler.submit import check_repeat, request_digest
from genqueue.storage import batches, files, loading
from genqueue.storage.errors import BatchNotFound
from genqueue.storage.models import Batch
from genqueue.storage.status import TokenUsage, token_usage

router = APIRouter(prefix="/v1/batches", tags=["OpenAI batches"], responses=ERROR_RESPONSES)

#: The metadata key that gives a batch its own webhook URL (OpenAI configures webhooks
#: per project; genqueue per tenant, or per batch with this key).
WEBHOOK_METADATA_KEY = "webhook_url"


#: A running batch's token usage is summed over its results at most this often (the
#: sum reads every result row; the counts stay exact on every request).
USAGE_TTL_SECONDS = 1.0
_USAGE_ENTRIES = 10_000


class _UsageCache:
    """Token usage per batch: summed again after USAGE_TTL_SECONDS while the batch runs,
    kept for good once it is final (it no longer changes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, TokenUsage]] = OrderedDict()

    def get(self, ctx: ApiContext, batch_id: str, job_ids: list[str], final: bool) -> TokenUsage:
        now = time.monotonic()
        with self._lock:
            found = self._entries.get(batch_id)
        # A batch that just became final is summed once more: the entry from while it
        # ran may miss its last results.
        if found is not None and found[0] > now and (found[0] == float("inf") or not final):
            return found[1]
        usage = token_usage(ctx.store, job_ids)
        with self._lock:
            self._entries[batch_id] = (float("inf") if final else now + USAGE_TTL_SECONDS, usage)
            self._entries.move_to_end(batch_id)
            while len(self._entries) > _USAGE_ENTRIES:
                self._entries.popitem(last=False)
        return usage


_usage = _UsageCache()


def render(ctx: ApiContext, batch: Batch) -> BatchObject:
    view = batches.view_batch(ctx.store, batch.id)
    final = openai_status.openai_status(batch, view) in openai_status.TERMINAL
    usage = _usage.get(ctx, batch.id, [v.job.id for v in view.jobs], final)
    return BatchObject.model_validate(openai_status.batch_object(batch, view, usage))


@router.post("", response_model=BatchObject)
def create_batch(ctx: Ctx, caller: Caller, body: BatchCreate, key: IdempotencyKey) -> BatchObject:
    """Create a batch from an uploaded file (purpose `batch`). It answers at once, in
    `validating`; the file is read and queued in the background."""
    if body.endpoint not in ENDPOINTS:
        raise BadRequest(
            f"endpoint {body.endpoint!r} is not served; use {' or '.join(ENDPOINTS)} "
            "(embeddings and other endpoints are not available)",
            param="endpoint",
        )
    try:
        deadline = openai_status.window(body.completion_window)
    except ValueError as exc:
        raise BadRequest(f"completion_window: {exc}", param="completion_window") from None
    if deadline is None or deadline.total_seconds() <= 0:
        raise BadRequest(
            f"completion_window {body.completion_window!r}: use 24h, or another duration "
            "such as 30m, 48h or 7d",
            param="completion_window",
        )
    source = files.get_file(ctx.store, body.input_file_id, scope(caller))
    if source.purpose != "batch":
        raise BadRequest(
            f"file {source.id} has purpose {source.purpose!r}; upload the input with purpose batch",
            param="input_file_id",
        )
    digest = request_digest(
        {
            "input_file_id": body.input_file_id,
            "endpoint": body.endpoint,
            "completion_window": body.completion_window,
            "metadata": body.metadata,
        }
    )
    if key:
        existing = batches.find_by_key(ctx.store, key)
        if existing is not None:
            check_repeat("batch", existing.id, existing.options, digest)
            return render(ctx, existing)
    hook = webhook_url(
        ctx,
        caller.tenant,
        (body.metadata or {}).get(WEBHOOK_METADATA_KEY),
        field=f"metadata.{WEBHOOK_METADATA_KEY}",
    )
    with room_for(ctx.store, ctx.settings, caller.tenant, items=source.lines):
        created = loading.create_batch(
            ctx.store,
            input_name=source.filename,
            meta=dict(body.metadata or {}),
            options={"format": "openai", "request_digest": digest},
            idempotency_key=key,
            tenant=caller.tenant,
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            input_file_id=source.id,
            phase=batches.VALIDATING,
            webhook_url=hook,
        )
    if isinstance(created, str):  # the same key won a race
        return render(ctx, batches.get_batch(ctx.store, created, None))
    ctx.background.submit(
        submit_batch_file,
        ctx,
        created.id,
        source.path,
        name=source.filename,
        tenant=caller.tenant,
        endpoint=body.endpoint,
        deadline=deadline,
        metadata=dict(body.metadata or {}),
    )
    return render(ctx, created)


@router.get("", response_model=BatchList)
def list_batches(
    ctx: Ctx,
    caller: Caller,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    """Batches, newest first, a page at a time (`after`: the last id of the page before)."""
    rows, more = batches.list_api_batches(ctx.store, scope(caller), after=after, limit=limit)
    data = [render(ctx, b) for b in rows]
    return BatchList(
        data=data,
        has_more=more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


@router.get("/{batch_id}", response_model=BatchObject)
def retrieve_batch(ctx: Ctx, caller: Caller, batch_id: str) -> BatchObject:
    """A batch, with live request counts and usage while it runs."""
    return render(ctx, _api_batch(ctx, caller, batch_id))


@router.post("/{batch_id}/cancel", response_model=BatchObject)
def cancel_batch(ctx: Ctx, caller: Caller, batch_id: str) -> BatchObject:
    """Cancel a batch: nothing new starts, running lines finish their micro-batch; the
    lines that never ran go to the error file as `batch_cancelled`."""
    batch = _api_batch(ctx, caller, batch_id)
    view = batches.view_batch(ctx.store, batch_id)
    if openai_status.openai_status(batch, view) in openai_status.TERMINAL:
        return render(ctx, batch)
    batches.mark_cancelling(ctx.store, batch_id)
    cancel_jobs(ctx, [v.job.id for v in view.jobs])
    return render(ctx, batches.get_batch(ctx.store, batch_id, None))


def _api_batch(ctx: ApiContext, caller: Caller, batch_id: str) -> Batch:
    batch = batches.get_batch(ctx.store, batch_id, scope(caller))
    if batch.endpoint is None:  # made by the CLI: served by the native API
        raise BatchNotFound(batch_id)
    return batch
