"""Production settings refuse services open to the network without a password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from genqueue.client import Client
from genqueue.security import InsecureSettings, check_settings, problems
from genqueue.settings import Settings


@pytest.fixture(autouse=True)
def _no_password_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pgpass


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost/0",
        "redis://[::1]:6379/0",
        "unix:///run/redis.sock",
        "redis://:s3cret@10.0.0.5:6379/0",
        "rediss://user:s3cret@redis.internal:6380/0?ssl_cert_reqs=required",
    ],
)
def test_brokers_that_pass(url: str) -> None:
    assert problems(Settings(broker_url=url)) == []


@pytest.mark.parametrize(
    "url", ["redis://10.0.0.5:6379/0", "rediss://redis.internal:6380/0", "redis://user@h/0"]
)
def test_a_broker_on_the_network_without_a_password(url: str) -> None:
    [problem] = problems(Settings(broker_url=url))
    assert "without a password" in problem and "redis://:PASSWORD@host:6379/0" in problem


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgresql://genqueue@localhost/db",
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql://genqueue:pw@db.internal/db?sslmode=verify-full",
        "postgresql://genqueue@db.internal/db?sslmode=verify-full&sslcert=/c.pem&sslkey=/k.pem",
        "sqlite:////var/lib/genqueue.db",
    ],
)
def test_databases_that_pass(url: str) -> None:
    assert problems(Settings(database_url=url)) == []


def test_a_database_on_the_network_without_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(database_url="postgresql://genqueue@db.internal/genqueue")
    [problem] = problems(settings)
    assert "db.internal" in problem and "PGPASSWORD" in problem
    monkeypatch.setenv("PGPASSWORD", "pw")
    assert problems(settings) == []


def test_roles_refuse_unless_waived() -> None:
    bad = Settings(broker_url="redis://10.1.2.3:6379/0", database_url="sqlite:///x.db")
    with pytest.raises(InsecureSettings, match="refusing to start the worker: the broker"):
        check_settings(bad, "worker")
    check_settings(bad.model_copy(update={"allow_insecure": True}), "worker")
    with pytest.raises(InsecureSettings, match="GENQUEUE_ALLOW_INSECURE=true"):
        Client(settings=bad)


@pytest.mark.parametrize("role", ["worker", "scheduler"])
def test_commands_refuse_in_one_line(role: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GENQUEUE_BROKER_URL": "redis://192.0.2.1:6379/0",  # TEST-NET: never contacted
        "GENQUEUE_DATABASE_URL": f"sqlite:///{tmp_path / 'db'}",
    }
    args = ["worker", "--model", "tiny-gpt2"] if role == "worker" else ["scheduler"]
    proc = subprocess.run(
        [sys.executable, "-m", "genqueue.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: refusing to start the {role}: the broker")
    assert "Traceback" not in proc.stderr
