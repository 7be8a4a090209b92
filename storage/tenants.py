"""API keys: each binds a tenant (and maybe admin rights) to a secret shown once.

Only the SHA-256 of a key is stored. Keys carry 256 bits of randomness, so a plain hash
is enough (no slow KDF needed), and the hash found by the index lookup is compared
again in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update

from genqueue.storage.db import Store, utcnow
from genqueue.storage.errors import ApiKeyNotFound, StorageError
from genqueue.storage.models import ApiKey

#: What a key looks like: "gq-" and 43 URL-safe characters.
KEY_PREFIX = "gq-"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a tenant, and whether it may see every tenant."""

    tenant: str
    admin: bool = False
    key_id: str | None = None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise StorageError(
            f"tenant {tenant!r}: use 1-64 letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit)"
        )
    return tenant


def create_key(
    store: Store, tenant: str, *, admin: bool = False, name: str | None = None
) -> tuple[ApiKey, str]:
    """A new key for `tenant`; returns its row and the secret (not stored anywhere)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id="key_" + secrets.token_hex(8),
        tenant=check_tenant(tenant),
        name=name,
        admin=admin,
        key_hash=hash_key(secret),
        created_at=utcnow(),
    )
    with store.session() as s:
        s.add(row)
    return row, secret


def authenticate(store: Store, secret: str) -> Principal | None:
    """The principal of a key, or None for an unknown or revoked one."""
    digest = hash_key(secret)
    with store.read() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, digest):
        return None
    return Principal(row.tenant, row.admin, row.id)


def list_keys(store: Store) -> list[ApiKey]:
    with store.read() as s:
        return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(store: Store, key_id: str) -> bool:
    """Revoke a key; False when it was revoked already (raises ApiKeyNotFound)."""
    with store.session() as s:
        row = s.get(ApiKey, key_id)
        if row is None:
            raise ApiKeyNotFound(key_id)
        if row.revoked_at is not None:
            return False
        s.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))
        return True


def any_key(store: Store) -> bool:
    """Whether at least one key is usable (not revoked)."""
    with store.read() as s:
        return s.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None
