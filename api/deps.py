"""What every route gets: the API's context (store, dispatcher, settings) and the
caller (the tenant its API key is bound to)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from genqueue.api.errors import BadRequest, Unauthorized
from genqueue.scheduler.dispatch import Dispatcher
from genqueue.settings import Settings
from genqueue.storage import tenants
from genqueue.storage.db import Store
from genqueue.storage.models import DEFAULT_TENANT
from genqueue.storage.tenants import Principal


@dataclass
class ApiContext:
    settings: Settings
    store: Store
    dispatcher: Dispatcher | None
    files_dir: Path
    #: Runs submissions of uploaded files off the event loop (a batch is `validating`
    #: meanwhile).
    background: ThreadPoolExecutor


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.genqueue
    return ctx


Ctx = Annotated[ApiContext, Depends(context)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `genqueue keys create`")


def principal(
    ctx: Ctx, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller: the tenant of its key. A server with no key at all (it then listens on
    loopback only) serves everyone as the default tenant, whatever key they send (SDKs
    always send one)."""
    if credentials is not None:
        found = tenants.authenticate(ctx.store, credentials.credentials)
        if found is not None:
            return found
    if not tenants.any_key(ctx.store):
        return Principal(DEFAULT_TENANT)
    if credentials is None:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    raise Unauthorized("the API key is unknown or revoked")


Caller = Annotated[Principal, Depends(principal)]


def scope(caller: Principal) -> str | None:
    """The tenant a query is limited to (None: an admin sees every tenant)."""
    return None if caller.admin else caller.tenant


_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")


def idempotency_key(
    caller: Caller,
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Sending a create request again with the same key returns what the "
            "first one created",
        ),
    ] = None,
) -> str | None:
    """The caller's Idempotency-Key, scoped by tenant (another tenant's same key never
    matches)."""
    if key is None:
        return None
    if not _KEY.match(key):
        raise BadRequest(
            "Idempotency-Key: use 1-128 printable ASCII characters", param="Idempotency-Key"
        )
    return f"{caller.tenant}:{key}"


IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]
