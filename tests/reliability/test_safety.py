"""Safe by default: JSON-only messages, safetensors-only weights, no remote code unless
asked, the loaded revision recorded; a real model's over-long prompt fails (or is cut)
alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from genqueue.protocol import TASK_NAME, queue_for
from genqueue.worker.provenance import local_revision
from tests.reliability.cluster import MODEL, ClusterFactory, depth, wait_for

pytestmark = pytest.mark.slow


class Exploit:
    """Unpickling this runs a shell command (what a pickle message could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_message_is_refused_and_the_worker_keeps_working(
    sqlite_url: str, make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """A pickle-serialized message whose payload would run a command lands on a
    worker's queue: the worker refuses to deserialize it (JSON only), drops it, runs
    nothing, and goes on serving jobs in the same process."""
    c = make_cluster(sqlite_url)
    sup = c.start_workers(1)
    c.wait_workers_ready(1)
    pid = sup.pids()[0]
    marker = tmp_path / "exploited"
    attacker = Celery("attacker", broker=c.settings.broker_url)
    attacker.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    queue = queue_for(MODEL)
    attacker.send_task(
        TASK_NAME, args=[Exploit(marker)], queue=queue, routing_key=queue, serializer="pickle"
    )
    attacker.close()
    wait_for("the worker to take the message", lambda: depth(c.settings.broker_url or "") == 0, 30)
    job_id = c.submit([{"prompt": f"after the attack {i}"} for i in range(20)])
    st = c.wait(job_id, timeout=30)
    assert st["state"] == "completed"
    c.assert_exactly_once(job_id, 20)
    assert not marker.exists()
    assert sup.pids() == [pid] and sup.restarts == [0]
    assert "untrusted content" in (c.tmp / "workers-0" / "worker-0.log").read_text()


WORKER = [sys.executable, "-m", "genqueue.worker.process"]
EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).touch()  # runs if the model's code is ever imported
from transformers import GPT2Config, GPT2LMHeadModel
class EvilConfig(GPT2Config):
    model_type = "gq-evil"
class EvilModel(GPT2LMHeadModel):
    config_class = EvilConfig
"""


def unsafe_models(tiny: Path, tmp: Path, marker: Path) -> tuple[Path, Path]:
    """Two copies of the tiny model: one whose weights are a pickle (`.bin`) that runs
    a command when loaded, one whose config asks for code shipped with the model."""
    pickled = tmp / "pickled-weights"
    pickled.mkdir()
    for f in tiny.iterdir():
        if f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    import pickle

    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(Exploit(marker)))

    remote = tmp / "remote-code"
    remote.mkdir()
    for f in tiny.iterdir():
        (remote / f.name).write_bytes(f.read_bytes())
    config = json.loads((remote / "config.json").read_text())
    config["model_type"] = "gq-evil"
    config["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForCausalLM": "evil.EvilModel",
    }
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    return pickled, remote


def test_unsafe_models_are_refused(
    sqlite_url: str, make_cluster: ClusterFactory, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    """Weights that are not safetensors are refused at submission and by a worker; a
    model that ships its own code does not run it unless the worker was started with
    `--trust-remote-code`. Nothing the files contain is ever executed."""
    c = make_cluster(sqlite_url, reconciler=False)
    marker = tmp_path / "exploited"
    pickled, remote = unsafe_models(tiny_gpt2_dir, tmp_path, marker)
    env = {**os.environ, **c.env()}
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "hello"}\n')
    submit = subprocess.run(
        [sys.executable, "-m", "genqueue.cli", "submit", str(src), "--model", str(pickled)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submit.returncode == 2 and "safetensors" in submit.stderr
    workers = {
        name: subprocess.Popen(
            [*WORKER, "--model", str(model), "--engine", "hf", "--device", "cpu"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, model in (("pickled", pickled), ("remote", remote))
    }
    out = {}
    for name, proc in workers.items():
        out[name], _ = proc.communicate(timeout=120)
        assert proc.returncode not in (0, None), out[name]
    assert "safetensors only" in out["pickled"]
    assert "trust_remote_code" in out["remote"] or "trust-remote-code" in out["remote"]
    assert not marker.exists()


def test_real_model_records_its_revision_and_fails_only_overlong_prompts(
    sqlite_url: str, make_cluster: ClusterFactory, tiny_gpt2_dir: Path
) -> None:
    """A tiny GPT-2 (context 512) worker: a 700-word prompt fails alone with
    `prompt_too_long`, or is cut with `truncate=True` (`"truncated": true`); the
    revision the worker loaded is recorded on the job and on every attempt."""
    c = make_cluster(sqlite_url)
    sup = c.start_workers(1, engine="hf", model=str(tiny_gpt2_dir))
    pid = sup.pids()[0]
    records: list[dict[str, Any]] = [
        {"custom_id": f"ok{i}", "prompt": f"hello {i}"} for i in range(6)
    ]
    records.append({"custom_id": "long", "prompt": "the cat sat on the mat " * 120})
    kw: dict[str, Any] = {"model": str(tiny_gpt2_dir), "max_new_tokens": 4}
    plain, cut = c.submit(records, **kw), c.submit(records, truncate=True, **kw)
    revision = local_revision(tiny_gpt2_dir)
    for job_id, truncate in ((plain, False), (cut, True)):
        st = c.wait(job_id, timeout=120)
        by_id = {ln["custom_id"]: ln for ln in c.assert_exactly_once(job_id, 7)}
        assert all(by_id[f"ok{i}"]["status"] == "succeeded" for i in range(6))
        long = by_id["long"]
        if truncate:
            assert st["state"] == "completed"
            assert long["truncated"] is True and long["usage"]["prompt_tokens"] <= 512 - 4
        else:
            assert st["state"] == "completed_with_errors"
            assert long["error"]["code"] == "prompt_too_long"
        assert st["revision"] == revision and st["engine"] == "hf"
        assert {(a.engine, a.model_revision) for a in c.attempts(job_id)} == {("hf", revision)}
    assert sup.pids() == [pid] and sup.restarts == [0]


def test_remote_code_runs_only_for_jobs_that_ask_on_workers_that_allow_it(
    sqlite_url: str, make_cluster: ClusterFactory, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    """The operator starts a worker with --trust-remote-code for a model that ships its
    own code: a job submitted with --trust-remote-code runs on it; a job that did not
    ask fails every item with `remote_code_refused`, naming the flag."""
    c = make_cluster(sqlite_url)
    marker = tmp_path / "model-code-ran"
    _, remote = unsafe_models(tiny_gpt2_dir, tmp_path, marker)
    c.start_workers(1, engine="hf", model=str(remote), trust_remote_code=True)
    recs = [{"custom_id": f"c{i}", "prompt": f"hello {i}"} for i in range(4)]
    asked = c.submit(recs, model=str(remote), trust_remote_code=True, max_new_tokens=3)
    st = c.wait(asked, timeout=120)
    assert st["state"] == "completed", st
    assert marker.exists()  # the model's own code ran: the operator allowed it
    silent = c.submit(recs, model=str(remote), max_new_tokens=3)
    st = c.wait(silent, timeout=60)
    assert st["state"] == "failed", st
    lines = c.assert_exactly_once(silent, 4)
    assert {ln["error"]["code"] for ln in lines} == {"remote_code_refused"}
    assert "submit with --trust-remote-code" in lines[0]["error"]["message"]
