"""The one mapping from genqueue's batch and job states to the OpenAI Batch statuses,
and the Batch object built from it.

| genqueue | OpenAI |
|---|---|
| input being submitted (batch phase `validating`, or a job still `submitting`) | `validating` |
| input refused (batch phase `failed`) | `failed`, with `errors.data[{code, message, line}]` |
| cancelled while validating, whose reading then stopped (phase `cancelled`) | `cancelled` |
| jobs `queued` / `running` | `in_progress` |
| every item has its result, a job not yet final | `finalizing` |
| cancel asked, jobs not yet final | `cancelling` |
| `completed`, `completed_with_errors`, `failed` (every line failed) | `completed` |
| `cancelled` | `cancelled` |
| `expired` | `expired` |
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from genqueue.durations import parse_duration
from genqueue.storage.batches import (
    CANCELLED,
    FAILED,
    OPENAI_FINAL_STATUS,
    VALIDATING,
    BatchView,
)
from genqueue.storage.db import as_utc
from genqueue.storage.models import Batch, JobState
from genqueue.storage.status import TokenUsage

#: genqueue's final batch states and the OpenAI status of each.
_FINAL = OPENAI_FINAL_STATUS
#: Statuses after which a batch changes no more.
TERMINAL = frozenset({"failed", "completed", "cancelled", "expired"})


def openai_status(batch: Batch, view: BatchView) -> str:
    """The OpenAI status of a batch (see the table above)."""
    if batch.phase == FAILED:
        return "failed"
    if batch.phase == CANCELLED:
        return "cancelled"
    state = view.state
    if state in _FINAL:
        return _FINAL[state]
    cancelling = batch.cancelling_at is not None or any(v.job.cancel_requested for v in view.jobs)
    if batch.phase == VALIDATING or state == JobState.SUBMITTING.value:
        return "cancelling" if cancelling else "validating"
    if cancelling:
        return "cancelling"
    counts = view.counts
    if counts.total and counts.done >= counts.total:
        return "finalizing"
    return "in_progress"


def _ts(value: datetime | None) -> int | None:
    value = as_utc(value)
    return int(value.timestamp()) if value is not None else None


def window(text: str) -> timedelta | None:
    """A completion window ("24h", or another duration: 30m, 2d) as a duration."""
    return parse_duration(text)


def output_file_id(batch_id: str, *, errors: bool) -> str:
    """The id of a batch's output (or error) file: a view of its results, never copied."""
    return f"file-{batch_id.removeprefix('batch_')}-{'errors' if errors else 'output'}"


def batch_of_file(file_id: str) -> tuple[str, bool] | None:
    """(batch id, is the error file) for an output file id, else None."""
    for suffix, errors in (("-output", False), ("-errors", True)):
        if file_id.startswith("file-") and file_id.endswith(suffix):
            return "batch_" + file_id[len("file-") : -len(suffix)], errors
    return None


def batch_object(batch: Batch, view: BatchView, usage: TokenUsage) -> dict[str, Any]:
    """The OpenAI Batch object of a batch, with every field of the SDK's `Batch`."""
    status = openai_status(batch, view)
    counts = view.counts
    unsuccessful = counts.failed + counts.cancelled + counts.expired
    finished = [as_utc(v.job.finished_at) for v in view.jobs]
    ended = max(f for f in finished if f) if finished and all(finished) else None
    created = as_utc(batch.created_at)
    span = window(batch.completion_window or "24h")
    errors = None
    if batch.errors:
        errors = {"object": "list", "data": batch.errors}
    running = status not in ("validating", "failed")
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint or "",
        "errors": errors,
        "input_file_id": batch.input_file_id or "",
        "completion_window": batch.completion_window or "24h",
        "status": status,
        "output_file_id": output_file_id(batch.id, errors=False)
        if running and counts.succeeded
        else None,
        "error_file_id": output_file_id(batch.id, errors=True)
        if running and unsuccessful
        else None,
        "created_at": _ts(created) or 0,
        "in_progress_at": _ts(batch.in_progress_at),
        "expires_at": _ts(created + span) if created and span else None,
        "finalizing_at": _ts(ended) if status == "completed" else None,
        "completed_at": _ts(ended) if status == "completed" else None,
        "failed_at": _ts(batch.failed_at),
        "expired_at": _ts(ended) if status == "expired" else None,
        "cancelling_at": _ts(batch.cancelling_at),
        # A batch cancelled before any job of it opened ended when it was cancelled.
        "cancelled_at": _ts(ended or batch.cancelling_at) if status == "cancelled" else None,
        "request_counts": {
            "total": counts.total,
            "completed": counts.succeeded,
            "failed": unsuccessful,
        },
        "metadata": {str(k): str(v) for k, v in (batch.meta or {}).items()} or None,
        "model": ", ".join(sorted({str(v.job.options.get("model_name")) for v in view.jobs}))
        or None,
        "usage": {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }
