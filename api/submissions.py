"""Submitting from the API: the spec every API submission shares (the tenant, the
offered models), and an uploaded batch file's submission run off the event loop."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from genqueue.api.deps import ApiContext
from genqueue.api.errors import BadRequest
from genqueue.scheduler.errors import InputError, SubmissionError
from genqueue.scheduler.submit import JobSpec, Offered, submit_job
from genqueue.storage import batches, catalog, lifecycle, webhooks
from genqueue.storage.errors import JobStateError
from genqueue.webhooks import check_url

log = logging.getLogger("genqueue.api")


def offered(ctx: ApiContext) -> dict[str, Offered]:
    """The models API callers may name: the operator's offered models."""
    return {m.name: Offered(m.model, m.revision) for m in catalog.offered_models(ctx.store)}


def webhook_url(ctx: ApiContext, tenant: str, url: str | None, *, field: str) -> str | None:
    """A submission's webhook URL, checked (http/https, no credentials), for a tenant
    that has a signing secret to sign its events with (BadRequest naming `field`)."""
    if url is None:
        return None
    check_url(url, field=field)
    if webhooks.get_endpoint(ctx.store, tenant) is None:
        raise BadRequest(
            f"{field}: tenant {tenant!r} has no webhook signing secret yet; the operator "
            f"creates one with `genqueue webhooks set --tenant {tenant}`",
            param=field,
        )
    return url


def problem_list(exc: SubmissionError) -> list[dict[str, Any]]:
    """A refused submission as OpenAI batch errors: [{code, message, param, line}]."""
    if isinstance(exc, InputError):
        out = [
            {"code": "invalid_request", "message": p.message, "param": None, "line": p.line or None}
            for p in exc.problems
        ]
        hidden = exc.total_problems - len(exc.problems)
        if hidden > 0:
            out.append(
                {
                    "code": "invalid_request",
                    "message": f"... and {hidden} more problem(s)",
                    "param": None,
                    "line": None,
                }
            )
        return out
    return [{"code": "invalid_file", "message": str(exc), "param": None, "line": None}]


def submit_batch_file(
    ctx: ApiContext,
    batch_id: str,
    path: Path,
    *,
    name: str,
    tenant: str,
    endpoint: str,
    deadline: timedelta | None,
    metadata: dict[str, Any],
) -> None:
    """Store an uploaded OpenAI batch file into its (validating) batch and open it; a
    refused file fails the batch with its line-numbered problems. Runs in a thread."""
    spec = JobSpec(
        tenant=tenant,
        offered=offered(ctx),
        endpoint=endpoint,
        batch_id=batch_id,
        deadline=deadline,
        metadata=metadata,
        task_tokens=ctx.settings.task_tokens,
        chunk_size=ctx.settings.chunk_size,
        limits=ctx.settings.input_limits(),
    )
    try:
        submitted = submit_job(
            ctx.store, ctx.dispatcher, str(path), spec, fmt="openai", input_name=name
        )
    except SubmissionError as exc:
        batches.refused(ctx.store, batch_id, problem_list(exc))
        return
    except Exception:
        log.exception("batch %s: submitting its input failed", batch_id)
        batches.refused(
            ctx.store,
            batch_id,
            [
                {
                    "code": "server_error",
                    "message": "the server failed while reading the file; it is logged "
                    "on the server, try again",
                    "param": None,
                    "line": None,
                }
            ],
        )
        return
    batches.opened(ctx.store, batch_id)
    if batches.get_batch(ctx.store, batch_id, None).cancelling_at is not None:
        cancel_jobs(ctx, list(submitted.job_ids))


def cancel_jobs(ctx: ApiContext, job_ids: list[str]) -> None:
    """Cancel each job (one still being submitted stops now and ends once it opens)."""
    for job_id in job_ids:
        try:
            lifecycle.request_cancel(ctx.store, job_id)
        except JobStateError:
            # Still submitting: its work stops now (no task of it starts; the windows
            # stored from now on are not sent), and submit_batch_file ends it
            # `cancelled` once the file is stored.
            lifecycle.stop_job(ctx.store, job_id)
