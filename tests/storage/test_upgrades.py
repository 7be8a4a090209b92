"""Schema upgrades as an operator runs them: every revision from empty, and from every
earlier revision with a job in it on PostgreSQL, that job then finishing on the new
schema; workers refusing a schema that is not theirs; `genqueue db upgrade|current`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import MetaData, insert

from genqueue.storage import leases, status
from genqueue.storage.claims import Claim
from genqueue.storage.completion import complete_task
from genqueue.storage.db import Store
from genqueue.storage.errors import SchemaMismatch
from genqueue.storage.migrate import (
    check_schema,
    current_revision,
    head_revision,
    revisions,
    upgrade,
)
from tests.storage.factories import ok

REVISIONS = revisions()
GQ = [sys.executable, "-m", "genqueue.cli"]

#: Values for the rows an older schema needs. A column that is NOT NULL without a default
#: and is missing here fails the test: add it when a migration adds such a column.
_NOW = datetime(2026, 1, 1, tzinfo=UTC)
_ROWS: dict[str, dict[str, Any]] = {
    "jobs": {
        "id": "0" * 32,
        "kind": "generate",
        "model": "m",
        "queue": "q",
        "state": "queued",
        "params": {"max_new_tokens": 4},
        "chunk_size": 3,
        "priority": 5,
        "metadata": {},
        "options": {},
        "total_items": 6,
        "duplicate_executions": 0,
        "cancel_requested": False,
        "created_at": _NOW,
        "loaded_at": _NOW,
    },
    "tasks": {
        "job_id": "0" * 32,
        "state": "pending",
        "priority": 5,
        "n_items": 3,
        "n_succeeded": 0,
        "n_failed": 0,
        "attempts": 0,
    },
    "items": {"job_id": "0" * 32, "line": 1, "attempts": 0},
}


def test_revisions_form_one_chain() -> None:
    assert REVISIONS[0] == "0001" and REVISIONS[-1] == head_revision()
    assert len(set(REVISIONS)) == len(REVISIONS)


@pytest.mark.parametrize("target", REVISIONS)
def test_every_revision_from_empty(db_url: str, target: str) -> None:
    store = Store(db_url)
    try:
        assert upgrade(store, target) == (None, target)
        assert current_revision(store) == target
    finally:
        store.dispose()


def _row(meta: MetaData, table: str, **values: Any) -> dict[str, Any]:
    """A row for `table` as it is at this revision: the known values of its columns."""
    columns = meta.tables[table].columns
    row = {}
    for column in columns:
        if column.name in values:
            row[column.name] = values[column.name]
        elif column.name in _ROWS[table]:
            row[column.name] = _ROWS[table][column.name]
        elif not column.nullable and column.server_default is None and not column.primary_key:
            raise AssertionError(
                f"{table}.{column.name} is NOT NULL without a default: give it a value in "
                "_ROWS so that upgrades are tested with data"
            )
    return row


def _old_job(store: Store) -> list[int]:
    """A queued job of 6 items in 2 tasks, inserted as the current (older) schema has
    them; returns the task ids."""
    meta = MetaData()
    with store.engine.begin() as conn:
        meta.reflect(conn, only=["jobs", "tasks", "items"])
        conn.execute(insert(meta.tables["jobs"]), [_row(meta, "jobs")])
        task_ids = []
        for _ in range(2):
            res = conn.execute(
                insert(meta.tables["tasks"]).returning(meta.tables["tasks"].c.id),
                [_row(meta, "tasks")],
            )
            task_ids.append(int(res.scalar_one()))
        conn.execute(
            insert(meta.tables["items"]),
            [
                _row(
                    meta,
                    "items",
                    idx=i,
                    line=i + 1,
                    custom_id=f"c{i}",
                    prompt=f"prompt {i}",
                    task_id=task_ids[i // 3],
                )
                for i in range(6)
            ],
        )
    return task_ids


@pytest.mark.parametrize("start", REVISIONS[:-1])
def test_a_job_from_every_earlier_revision_finishes_after_the_upgrade(
    pg_url: str, start: str
) -> None:
    store = Store(pg_url)
    try:
        upgrade(store, start)
        task_ids = _old_job(store)
        with pytest.raises(SchemaMismatch, match=f"is at schema {start}; this genqueue needs"):
            check_schema(store)  # a worker of this version refuses the old schema
        assert upgrade(store) == (start, head_revision())
        check_schema(store)
        for tid in task_ids:
            claim = leases.claim_task(store, tid, "w1", lease_seconds=30, max_attempts=3)
            assert isinstance(claim, Claim)
            assert [i.prompt for i in claim.items] == [f"prompt {i.idx}" for i in claim.items]
            complete_task(store, claim, [ok(i.idx) for i in claim.items], outcome="done")
        view = status.view_job(store, "0" * 32)
        assert view.job.state == "completed"
        assert (view.counts.succeeded, view.counts.total) == (6, 6)
    finally:
        store.dispose()


def test_a_newer_schema_is_refused(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    try:
        upgrade(store)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
        for refuse in (check_schema, upgrade):
            with pytest.raises(SchemaMismatch, match="at schema 9999, newer than this genqueue"):
                refuse(store)
    finally:
        store.dispose()


def gq(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GENQUEUE_DATABASE_URL"}
    return subprocess.run([*GQ, *args], capture_output=True, text=True, timeout=120, env=env)


def test_db_commands_and_a_worker_that_refuses_the_schema(pg_url: str, redis_url: str) -> None:
    before = gq("db", "current", "--database-url", pg_url, "--json")
    assert before.returncode == 1
    assert json.loads(before.stdout)["state"] == "behind"
    assert "postgresql" in json.loads(before.stdout)["database"]
    # A worker on an empty database says what to run, once, and starts nothing.
    worker = gq(
        "worker", "--model", "tiny-gpt2", "--database-url", pg_url, "--broker-url", redis_url
    )
    assert worker.returncode == 2
    assert "has no genqueue schema yet" in worker.stderr
    assert "Run `genqueue db upgrade`" in worker.stderr
    up = gq("db", "upgrade", "--database-url", pg_url)
    assert up.returncode == 0 and f"upgraded from empty to {head_revision()}" in up.stderr
    again = gq("db", "upgrade", "--database-url", pg_url)
    assert again.returncode == 0 and "already at schema" in again.stderr
    now = gq("db", "current", "--database-url", pg_url)
    assert now.returncode == 0 and "(current)" in now.stdout
