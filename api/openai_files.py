"""/v1/files: uploads streamed to disk, their listing, content and removal, and the
output and error files of batches (views of their results, streamed, never copied)."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse

from genqueue.api import openai_status
from genqueue.api.deps import Caller, Ctx, IdempotencyKey, scope
from genqueue.api.errors import ERROR_RESPONSES, BadRequest
from genqueue.api.schemas import FileDeleted, FileList, FileObject
from genqueue.api.uploads import receive
from genqueue.scheduler.exports import iter_openai_file
from genqueue.storage import batches, files
from genqueue.storage.db import as_utc, utcnow
from genqueue.storage.errors import BatchNotFound, FileNotFound
from genqueue.storage.models import StoredFile

router = APIRouter(prefix="/v1/files", tags=["OpenAI files"], responses=ERROR_RESPONSES)

#: The purposes an upload may have (genqueue serves batches only).
PURPOSES = ("batch",)
#: OpenAI's longest expiry for an uploaded file.
MAX_EXPIRY_SECONDS = 30 * 24 * 3600
#: Sizes of finished batches' output files, once computed (they no longer change).
_SIZES: dict[str, int] = {}


def file_object(row: StoredFile) -> FileObject:
    created = as_utc(row.created_at)
    expires = as_utc(row.expires_at)
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=int(created.timestamp()) if created else 0,
        filename=row.filename,
        purpose=row.purpose,
        status="processed",
        expires_at=int(expires.timestamp()) if expires else None,
    )


def _expiry(fields: dict[str, str]) -> timedelta | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise BadRequest('expires_after[anchor] must be "created_at"', param="expires_after")
    if seconds is None or not seconds.isdigit() or not 1 <= int(seconds) <= MAX_EXPIRY_SECONDS:
        raise BadRequest(
            f"expires_after[seconds] must be a whole number of seconds, 1 to {MAX_EXPIRY_SECONDS}",
            param="expires_after",
        )
    return timedelta(seconds=int(seconds))


_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(PURPOSES)},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer"},
                    },
                }
            }
        },
    }
}


@router.post("", response_model=FileObject, openapi_extra=_UPLOAD_BODY)
async def create_file(
    request: Request, ctx: Ctx, caller: Caller, key: IdempotencyKey
) -> FileObject:
    """Upload a file (multipart: `file`, `purpose=batch`, optional `expires_after`). It
    streams to disk; one over the size or line limit is refused with 413."""
    file_id = files.new_file_id()
    target = files.file_path(ctx.files_dir, file_id)
    s = ctx.settings
    upload = await receive(
        request, target, max_bytes=s.api_max_upload_bytes, max_lines=s.api_max_file_lines
    )
    try:
        if upload.path is None:
            raise BadRequest("the form has no `file` field (the file to upload)", param="file")
        purpose = upload.fields.get("purpose")
        if purpose is None:
            raise BadRequest(
                f"the form has no `purpose` field; give purpose={PURPOSES[0]}", param="purpose"
            )
        if purpose not in PURPOSES:
            raise BadRequest(
                f"purpose: {purpose!r} is not served; use {', '.join(PURPOSES)}", param="purpose"
            )
        expiry = _expiry(upload.fields)
        row = await run_in_threadpool(
            files.add_file,
            ctx.store,
            file_id=file_id,
            tenant=caller.tenant,
            filename=upload.filename or "upload",
            purpose=purpose,
            size=upload.size,
            lines=upload.lines,
            path=upload.path,
            expires_at=utcnow() + expiry if expiry else None,
            idempotency_key=key,
        )
    except BaseException:
        with contextlib.suppress(OSError):
            target.unlink(missing_ok=True)
        raise
    return file_object(row)


@router.get("", response_model=FileList)
def list_files(
    ctx: Ctx,
    caller: Caller,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: Annotated[str | None, Query(max_length=32)] = None,
) -> FileList:
    """Uploaded files, newest first (`order=asc`: oldest first), a page at a time."""
    rows, more = files.list_files(
        ctx.store,
        scope(caller),
        purpose=purpose,
        after=after,
        limit=limit,
        newest_first=order == "desc",
    )
    data = [file_object(r) for r in rows]
    return FileList(
        data=data,
        has_more=more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


def _batch_file(ctx: Ctx, caller: Caller, file_id: str) -> tuple[str, bool] | None:
    """(batch id, is the error file) when `file_id` is a batch's output file this caller
    may read; raises FileNotFound for another tenant's."""
    found = openai_status.batch_of_file(file_id)
    if found is None:
        return None
    try:
        batches.get_batch(ctx.store, found[0], scope(caller))
    except BatchNotFound:
        raise FileNotFound(file_id) from None
    return found


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(ctx: Ctx, caller: Caller, file_id: str) -> FileObject:
    """A file's object (a batch's output or error file included)."""
    found = _batch_file(ctx, caller, file_id)
    if found is None:
        return file_object(files.get_file(ctx.store, file_id, scope(caller)))
    batch_id, errors = found
    batch = batches.get_batch(ctx.store, batch_id, None)
    view = batches.view_batch(ctx.store, batch_id)
    final = openai_status.openai_status(batch, view) in openai_status.TERMINAL
    size = _SIZES.get(file_id)
    if size is None:
        size = sum(len(c) for c in iter_openai_file(ctx.store, batch_id, errors=errors))
        if final:
            if len(_SIZES) >= 10_000:
                _SIZES.pop(next(iter(_SIZES)))
            _SIZES[file_id] = size
    created = as_utc(batch.created_at)
    return FileObject(
        id=file_id,
        bytes=size,
        created_at=int(created.timestamp()) if created else 0,
        filename=f"{batch_id}_{'error' if errors else 'output'}.jsonl",
        purpose="batch_output",
        status="processed",
    )


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def file_content(ctx: Ctx, caller: Caller, file_id: str) -> Any:
    """A file's bytes, streamed. For a batch's output or error file: its OpenAI output
    lines in input order (what is done so far while it runs)."""
    found = _batch_file(ctx, caller, file_id)
    if found is None:
        row = files.get_file(ctx.store, file_id, scope(caller))
        return FileResponse(row.path, media_type="application/octet-stream")
    batch_id, errors = found
    return StreamingResponse(
        iter_openai_file(ctx.store, batch_id, errors=errors),
        media_type="application/octet-stream",
    )


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(ctx: Ctx, caller: Caller, file_id: str) -> FileDeleted:
    """Remove an uploaded file (a batch's output files go with their batch)."""
    if _batch_file(ctx, caller, file_id) is not None:
        raise BadRequest(
            "a batch's output and error files are views of its results and cannot be "
            "removed on their own",
            param="file_id",
        )
    files.remove_file(ctx.store, file_id, scope(caller))
    return FileDeleted(id=file_id, deleted=True)
