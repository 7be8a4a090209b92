"""Per-tenant limits on what a submission may add: unfinished jobs and queued items
(the upload limits are enforced while a file streams in, see uploads.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from genqueue.api.errors import LimitReached, PayloadTooLarge
from genqueue.settings import Settings
from genqueue.storage.db import Store
from genqueue.storage.status import tenant_load

#: Seconds a client is told to wait before trying again once a limit is reached.
RETRY_AFTER = 30


def check_room(store: Store, settings: Settings, tenant: str, *, items: int, jobs: int = 1) -> None:
    """Raise LimitReached (429, Retry-After) when `tenant` cannot add `jobs` jobs of
    `items` items now, and PayloadTooLarge (413) for a submission that could never fit."""
    if items > settings.api_max_queued_items:
        raise PayloadTooLarge(
            f"the submission has {items} items, more than a tenant may have queued at all "
            f"({settings.api_max_queued_items}, GENQUEUE_API_MAX_QUEUED_ITEMS); split it "
            "into several jobs"
        )
    load = tenant_load(store, tenant)
    if load.live_jobs + jobs > settings.api_max_live_jobs:
        raise LimitReached(
            f"tenant {tenant!r} has {load.live_jobs} unfinished jobs, the limit is "
            f"{settings.api_max_live_jobs} (GENQUEUE_API_MAX_LIVE_JOBS); retry once some "
            "have finished",
            retry_after=RETRY_AFTER,
        )
    if load.open_items + items > settings.api_max_queued_items:
        raise LimitReached(
            f"tenant {tenant!r} has {load.open_items} items queued or running; {items} more "
            f"would pass the limit of {settings.api_max_queued_items} "
            "(GENQUEUE_API_MAX_QUEUED_ITEMS); retry once some have finished",
            retry_after=RETRY_AFTER,
        )


_TENANT_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@contextmanager
def room_for(
    store: Store, settings: Settings, tenant: str, *, items: int, jobs: int = 1
) -> Iterator[None]:
    """`check_room`, held while the submission inside is stored: two requests of one
    tenant cannot both pass a limit that only one of them fits (within an API process;
    several API processes can overshoot by their number). A tenant's submissions are
    stored one at a time."""
    with _LOCKS_GUARD:
        lock = _TENANT_LOCKS.setdefault(tenant, threading.Lock())
    with lock:
        check_room(store, settings, tenant, items=items, jobs=jobs)
        yield
