"""Uploaded files: one row each (tenant, name, purpose, size, lines), the bytes on disk.

The API streams an upload to a temporary path next to its final one, then `add_file`
records it; `remove_file` deletes both. Every lookup is scoped by tenant: another
tenant's file is "not found", exactly like a file that never existed.
"""

from __future__ import annotations

import contextlib
import secrets
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from genqueue.storage.db import Store, as_utc, utcnow
from genqueue.storage.errors import FileNotFound
from genqueue.storage.models import StoredFile

FILE_PREFIX = "file-"


def new_file_id() -> str:
    return FILE_PREFIX + secrets.token_hex(12)


def file_path(files_dir: Path, file_id: str) -> Path:
    return files_dir / file_id[len(FILE_PREFIX) : len(FILE_PREFIX) + 2] / file_id


def add_file(
    store: Store,
    *,
    file_id: str,
    tenant: str,
    filename: str,
    purpose: str,
    size: int,
    lines: int,
    path: Path,
    expires_at: datetime | None = None,
    idempotency_key: str | None = None,
) -> StoredFile:
    """Record a received file. With an idempotency key already used, the earlier file is
    returned (and this upload's bytes removed)."""
    if idempotency_key:
        found = _by_key(store, idempotency_key)
        if found is not None:
            path.unlink(missing_ok=True)
            return found
    row = StoredFile(
        id=file_id,
        tenant=tenant,
        filename=filename,
        purpose=purpose,
        bytes=size,
        lines=lines,
        path=str(path),
        created_at=utcnow(),
        expires_at=expires_at,
        idempotency_key=idempotency_key,
    )
    try:
        with store.session() as s:
            s.add(row)
    except IntegrityError:
        found = _by_key(store, idempotency_key) if idempotency_key else None
        if found is None:
            raise
        path.unlink(missing_ok=True)
        return found
    return row


def _by_key(store: Store, key: str) -> StoredFile | None:
    with store.read() as s:
        return s.scalar(select(StoredFile).where(StoredFile.idempotency_key == key))


def get_file(store: Store, file_id: str, tenant: str | None) -> StoredFile:
    """A file of `tenant` (any tenant's when None: an admin); raises FileNotFound,
    also for an expired file."""
    with store.read() as s:
        row = s.get(StoredFile, file_id)
    if row is None or (tenant is not None and row.tenant != tenant) or _expired(row):
        raise FileNotFound(file_id)
    return row


def _expired(row: StoredFile) -> bool:
    expires = as_utc(row.expires_at)
    return expires is not None and expires <= utcnow()


def list_files(
    store: Store,
    tenant: str | None,
    *,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = 100,
    newest_first: bool = True,
) -> tuple[list[StoredFile], bool]:
    """A page of files and whether more follow; `after` is the last id of the page before."""
    with store.read() as s:
        q = select(StoredFile)
        if tenant is not None:
            q = q.where(StoredFile.tenant == tenant)
        if purpose:
            q = q.where(StoredFile.purpose == purpose)
        now = utcnow()
        q = q.where((StoredFile.expires_at.is_(None)) | (StoredFile.expires_at > now))
        if after:
            mark = s.get(StoredFile, after)
            if mark is None or (tenant is not None and mark.tenant != tenant):
                raise FileNotFound(after)
            key = (StoredFile.created_at, StoredFile.id)
            if newest_first:
                q = q.where(
                    (key[0] < mark.created_at) | ((key[0] == mark.created_at) & (key[1] < mark.id))
                )
            else:
                q = q.where(
                    (key[0] > mark.created_at) | ((key[0] == mark.created_at) & (key[1] > mark.id))
                )
        if newest_first:
            q = q.order_by(StoredFile.created_at.desc(), StoredFile.id.desc())
        else:
            q = q.order_by(StoredFile.created_at, StoredFile.id)
        rows = list(s.scalars(q.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def remove_file(store: Store, file_id: str, tenant: str | None) -> None:
    """Delete a file's row and its bytes (raises FileNotFound)."""
    row = get_file(store, file_id, tenant)
    with store.session() as s:
        found = s.get(StoredFile, row.id)
        if found is not None:
            s.delete(found)
    with contextlib.suppress(OSError):
        Path(row.path).unlink(missing_ok=True)
