"""`genqueue serve`: API, reconciler and workers in one command on the embedded defaults
(SQLite and an embedded Redis), driven by the `openai` package; and `genqueue api`
refusing a non-loopback address while no key exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests.api.conftest import GQ, openai_line, stop_all, wait_batch, wait_until_up
from tests.services import free_port

pytestmark = pytest.mark.slow


def test_serve_offers_a_model_end_to_end(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GENQUEUE_")},
        "GENQUEUE_HOME": str(tmp_path / "home"),
        "GENQUEUE_RECONCILE_INTERVAL": "0.5",
        "OMP_NUM_THREADS": "1",
    }
    state = tmp_path / "state"
    # The operator commands act on the state dir `serve --state-dir` uses.
    subprocess.run(
        [*GQ, "models", "add", "tiny", "--model", str(tiny_gpt2_dir), "--state-dir", str(state)],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [*GQ, "serve", "--model", "tiny", "--port", str(port), "--state-dir", str(state)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, proc, log)
        # No key exists: loopback only, everyone is the default tenant.
        client = OpenAI(
            base_url=url + "/v1", api_key="any", max_retries=0, _strict_response_validation=True
        )
        text = "".join(openai_line(f"s{i}", "tiny") + "\n" for i in range(5))
        f = client.files.create(file=("in.jsonl", text.encode()), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_batch(client, batch.id, until={"completed", "failed"}, bound=180)
        assert done.status == "completed", (done, log.read_text()[-2000:])
        assert done.request_counts is not None and done.request_counts.completed == 5
        assert [m.id for m in client.models.list()] == ["tiny"]
        # A key made for this state dir locks the server: a request without it is a 401.
        made = subprocess.run(
            [*GQ, "keys", "create", "--tenant", "t1", "--state-dir", str(state), "--json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        secret = json.loads(made.stdout)["key"]
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        keyed = OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
        assert [m.id for m in keyed.models.list()] == ["tiny"]
    finally:
        stop_all({"serve": proc})
    assert proc.returncode is not None


def test_api_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GENQUEUE_DATABASE_URL": f"sqlite:///{tmp_path / 'gq.db'}",
        "GENQUEUE_HOME": str(tmp_path / "home"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "genqueue.cli", "api", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no API key exists" in proc.stderr and "keys create" in proc.stderr
    assert "Traceback" not in proc.stderr
