"""End to end through real Redis, real Celery worker processes and a real SQL store (SQLite
and PostgreSQL): every stored output equals what `model.generate` gives that item alone."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from genqueue.storage.text import clean_text
from tests.integration.conftest import Deployment

pytestmark = pytest.mark.slow

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "warm",
    "mat",
    "while",
    "rain",
    "fell",
    "over",
    "quiet",
    "hills",
    "and",
    "old",
    "roads",
    "led",
    "home",
    "past",
    "rivers",
    "bright",
    "with",
    "morning",
    "light",
]
NEW_TOKENS = 6


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def make_inputs(tmp: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Four jobs: generate (causal LM) and summarize/translate/qa (seq2seq)."""
    rng = random.Random(1234)
    files: dict[str, tuple[Path, dict[str, Any]]] = {}

    def write(name: str, records: list[dict[str, Any]], opts: dict[str, Any]) -> None:
        path = tmp / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        files[name] = (path, opts)

    write(
        "generate",
        [{"custom_id": f"g{i}", "prompt": sentence(rng, 1, 40)} for i in range(120)],
        {"kind": "generate"},
    )
    write("summarize", [{"text": sentence(rng, 5, 50)} for _ in range(40)], {"kind": "summarize"})
    write(
        "translate",
        [
            {"text": sentence(rng, 2, 20), "target_lang": rng.choice(["German", "French"])}
            for _ in range(40)
        ],
        {"kind": "translate", "defaults": {"source_lang": "English"}},
    )
    write(
        "qa",
        [
            {"question": sentence(rng, 3, 10) + "?", "context": sentence(rng, 0, 30)}
            for _ in range(40)
        ],
        {"kind": "qa"},
    )
    return files


def reference(model_dir: Path, prompts: list[str]) -> list[str]:
    """Greedy outputs of plain transformers, one prompt at a time."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(model_dir)
    cls = AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM
    model = cls.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    outs = []
    with torch.inference_mode():
        for p in prompts:
            enc = tok(p, return_tensors="pt")
            gen = model.generate(
                **enc,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
            new = gen[0] if cfg.is_encoder_decoder else gen[0, enc["input_ids"].shape[1] :]
            # NUL characters are dropped on storage (PostgreSQL cannot hold them).
            outs.append(clean_text(tok.decode(new, skip_special_tokens=True)) or "")
    return outs


@pytest.fixture(scope="module")
def references(
    tiny_gpt2_dir: Path, tiny_t5_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[str]]:
    """Expected outputs, computed once for both databases."""
    from genqueue.scheduler.inputs import read_items
    from genqueue.scheduler.kinds import JobInputSpec

    inputs = make_inputs(tmp_path_factory.mktemp("ref"))
    refs = {}
    for name, (path, opts) in inputs.items():
        spec = JobInputSpec(kind=opts["kind"], defaults=opts.get("defaults", {}))
        prompts = [it.prompt for it in read_items(path, spec)]  # type: ignore[union-attr]
        model = tiny_gpt2_dir if name == "generate" else tiny_t5_dir
        refs[name] = reference(model, prompts)
    return refs


def test_four_kinds_end_to_end(
    deployment: Deployment,
    tiny_gpt2_dir: Path,
    tiny_t5_dir: Path,
    references: dict[str, list[str]],
    tmp_path: Path,
) -> None:
    client = deployment.client
    inputs = make_inputs(tmp_path)
    deployment.start_workers(str(tiny_gpt2_dir), processes=1)
    deployment.start_workers(str(tiny_t5_dir), processes=1)
    job_ids = {}
    for name, (path, opts) in inputs.items():
        model = tiny_gpt2_dir if name == "generate" else tiny_t5_dir
        job_ids[name] = client.submit(path, model=str(model), max_new_tokens=NEW_TOKENS, **opts)
    for name, job_id in job_ids.items():
        final = client.wait(job_id, timeout=240, poll=0.5)
        n = len(references[name])
        assert final["state"] == "completed", final
        assert final["counts"] == {
            "total": n,
            "succeeded": n,
            "failed": 0,
            "running": 0,
            "pending": 0,
            "cancelled": 0,
            "expired": 0,
        }
        assert final["finished_at"] and final["started_at"]
        assert final["revision"] and final["engine"] == "hf"
        lines = list(client.results(job_id))
        assert [ln["index"] for ln in lines] == list(range(n))
        assert [ln["output"] for ln in lines] == references[name], name
        for ln in lines:
            assert set(ln) >= {
                "custom_id",
                "index",
                "status",
                "output",
                "finish_reason",
                "usage",
                "error",
            }
            assert ln["status"] == "succeeded" and ln["error"] is None
            assert ln["finish_reason"] in ("stop", "length")
            assert ln["usage"]["prompt_tokens"] > 0
            assert 0 <= ln["usage"]["completion_tokens"] <= NEW_TOKENS
        if name == "generate":
            assert [ln["custom_id"] for ln in lines] == [f"g{i}" for i in range(n)]
        else:
            assert lines[0]["custom_id"] == "line-1"

    # All three export formats carry the same lines.
    job_id = job_ids["generate"]
    expected = list(client.results(job_id))
    client.export(job_id, str(tmp_path / "r.jsonl"))
    client.export(job_id, str(tmp_path / "r.csv"))
    client.export(job_id, str(tmp_path / "r.parquet"))
    jl = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert jl == expected
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["output"] for r in rows] == [e["output"] for e in expected]
    assert [r["custom_id"] for r in rows] == [e["custom_id"] for e in expected]
    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert [r["output"] for r in table] == [e["output"] for e in expected]
    assert [r["completion_tokens"] for r in table] == [
        e["usage"]["completion_tokens"] for e in expected
    ]


def test_higher_priority_job_is_served_first(deployment: Deployment, tmp_path: Path) -> None:
    """Tasks wait in Redis per priority: a later, more urgent job overtakes an earlier one."""
    from sqlalchemy import select

    from genqueue.storage.models import Attempt

    client = deployment.client
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"p {i}"}) + "\n" for i in range(40)))
    low = client.submit(src, kind="generate", model="tiny-gpt2", chunk_size=4, priority=1)
    high = client.submit(src, kind="generate", model="tiny-gpt2", chunk_size=4, priority=9)
    deployment.start_workers("tiny-gpt2", engine="dry-run")
    assert client.wait(low, timeout=120, poll=0.3)["state"] == "completed"
    assert client.wait(high, timeout=30, poll=0.3)["state"] == "completed"
    with client.store.session() as s:
        order = s.scalars(select(Attempt.job_id).order_by(Attempt.started_at, Attempt.id)).all()
    assert order[:10] == [high] * 10, order
