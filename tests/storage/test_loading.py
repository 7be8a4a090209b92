"""Storing a submission: idempotency keys."""

from __future__ import annotations

from genqueue.storage import loading
from genqueue.storage.db import Store
from tests.storage.factories import make_job


def test_idempotency_key_returns_existing_job(store: Store) -> None:
    job = make_job(store, n=2, idempotency_key="k1")
    again = loading.create_job(
        store, kind="generate", model="m", queue="q", params={}, chunk_size=2, idempotency_key="k1"
    )
    assert again == job.id
