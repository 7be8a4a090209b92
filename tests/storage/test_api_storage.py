"""The HTTP API's storage, on SQLite and PostgreSQL: keys stored as hashes only, files
scoped by tenant, offered models, worker heartbeats, and API batches whose
submission died."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from genqueue.storage import batches, catalog, files, tenants, workers
from genqueue.storage.db import Store, utcnow
from genqueue.storage.errors import ApiKeyNotFound, FileNotFound
from genqueue.storage.models import ApiKey
from tests.storage.factories import api_batch


def test_keys_are_stored_as_hashes_and_can_be_revoked(store: Store) -> None:
    assert not tenants.any_key(store)
    row, secret = tenants.create_key(store, "team-a", name="ci")
    with store.read() as s:
        stored = s.scalars(select(ApiKey)).one()
    assert secret not in (stored.key_hash, stored.id) and len(stored.key_hash) == 64
    assert tenants.authenticate(store, secret) == tenants.Principal("team-a", False, row.id)
    assert tenants.authenticate(store, secret + "x") is None
    assert tenants.any_key(store)
    assert tenants.revoke_key(store, row.id) is True
    assert tenants.revoke_key(store, row.id) is False
    assert tenants.authenticate(store, secret) is None and not tenants.any_key(store)
    with pytest.raises(ApiKeyNotFound):
        tenants.revoke_key(store, "key_nope")


def test_files_are_scoped_by_tenant_and_page(store: Store, tmp_path: Path) -> None:
    made = []
    for i in range(3):
        path = tmp_path / f"f{i}"
        path.write_text("x\n")
        made.append(
            files.add_file(
                store,
                file_id=files.new_file_id(),
                tenant="a",
                filename=f"f{i}.jsonl",
                purpose="batch",
                size=2,
                lines=1,
                path=path,
            ).id
        )
    with pytest.raises(FileNotFound):
        files.get_file(store, made[0], "b")
    assert files.get_file(store, made[0], None).tenant == "a"  # an admin
    page, more = files.list_files(store, "a", limit=2)
    assert [f.id for f in page] == made[::-1][:2] and more
    rest, more = files.list_files(store, "a", limit=2, after=page[-1].id)
    assert [f.id for f in rest] == [made[0]] and not more
    assert files.list_files(store, "b") == ([], False)
    files.remove_file(store, made[0], "a")
    assert not (tmp_path / "f0").exists()


def test_offered_models_and_live_workers(store: Store) -> None:
    catalog.offer_model(store, "m", "org/model", revision="r1")
    catalog.offer_model(store, "m", "org/model2")
    assert [(m.name, m.model, m.revision) for m in catalog.offered_models(store)] == [
        ("m", "org/model2", None)
    ]
    workers.beat(store, "w1", queue="q", model="org/model2", engine="hf")
    workers.beat(store, "w1", queue="q", model="org/model2", engine="hf")
    workers.beat(store, "w2", queue="q", model="org/model2", engine="hf")
    assert workers.live_by_queue(store, within_seconds=30)["q"] == 2
    workers.leave(store, "w2")
    assert workers.live_by_queue(store, within_seconds=30)["q"] == 1
    catalog.withdraw_model(store, "m")
    assert catalog.offered_models(store) == []


def test_a_validating_batch_whose_submission_died_fails(store: Store) -> None:
    batch = api_batch(store, tenant="a")
    assert batches.fail_abandoned(store, created_before=utcnow() - timedelta(seconds=60)) == []
    assert batches.fail_abandoned(store, created_before=utcnow() + timedelta(seconds=1)) == [
        batch.id
    ]
    failed = batches.get_batch(store, batch.id, "a")
    assert failed.phase == batches.FAILED and failed.errors and failed.failed_at


def test_a_validating_batch_cancelled_before_its_submission_died_ends_cancelled(
    store: Store,
) -> None:
    from genqueue.api.openai_status import openai_status
    from genqueue.storage.models import WebhookEvent

    batch = api_batch(store, tenant="a", webhook_url="http://127.0.0.1:9/hook")
    batches.mark_cancelling(store, batch.id)
    assert batches.fail_abandoned(store, created_before=utcnow() + timedelta(seconds=1)) == [
        batch.id
    ]
    ended = batches.get_batch(store, batch.id, "a")
    assert ended.phase == batches.CANCELLED and not ended.errors and ended.failed_at is None
    assert openai_status(ended, batches.view_batch(store, batch.id)) == "cancelled"
    with store.read() as s:
        events = [e.type for e in s.query(WebhookEvent).filter_by(batch_id=batch.id)]
    assert events == ["batch.cancelled"]
