"""Result reuse (`--reuse`): a job copies the results of items identical to ones that
already succeeded (model revision, engine, params with seed, rendered prompt), and only
those; counted on the job and marked on the result lines. Real engine, SQLite and
PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from genqueue.params import GenerationParams
from genqueue.scheduler.submit import JobSpec, submit_job
from genqueue.settings import Settings
from genqueue.storage.db import Store
from genqueue.storage.results import iter_results
from genqueue.storage.status import view_job
from genqueue.worker.engines.base import GenRequest, ModelInfo
from genqueue.worker.engines.hf import HFEngine
from genqueue.worker.reuse import reuse_keys
from genqueue.worker.runner import WorkerContext, run_task
from tests.schemas import validate_line
from tests.storage.factories import task_ids


def _run(
    store: Store,
    engine: HFEngine,
    tmp_path: Path,
    prompts: list[str],
    *,
    reuse: bool,
    **params: Any,
) -> tuple[str, list[dict[str, Any]]]:
    src = tmp_path / f"in-{len(list(tmp_path.iterdir()))}.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    spec = JobSpec(
        model=engine.info.model_ref,
        params=GenerationParams(**{"max_new_tokens": 4, **params}),
        chunk_size=2,
        reuse=reuse,
    )
    job_id = submit_job(store, None, src, spec).job_id
    ctx = WorkerContext(store=store, engine=engine, settings=Settings(), worker_id="w1")
    for tid in task_ids(store, job_id):
        run_task(ctx, tid)
    assert view_job(store, job_id).job.state == "completed"
    lines = [line.to_record() for line in iter_results(store, job_id)]
    for line in lines:
        validate_line(line)
    return job_id, lines


def test_reuse_copies_identical_succeeded_items_and_only_those(
    store: Store, gpt2: HFEngine, tmp_path: Path
) -> None:
    first, base = _run(store, gpt2, tmp_path, ["a b", "c d", "e f"], reuse=False)
    assert all("reused_from" not in ln for ln in base)
    # Half repeats (two of them swapped in order), half new.
    job, lines = _run(store, gpt2, tmp_path, ["c d", "x y", "a b", "z w"], reuse=True)
    assert [ln.get("reused_from") for ln in lines] == [first, None, first, None]
    assert lines[0]["output"] == base[1]["output"] and lines[2]["output"] == base[0]["output"]
    assert lines[0]["usage"] == base[1]["usage"]
    st = view_job(store, job).to_dict()
    assert st["reused"] == 2 and st["counts"]["succeeded"] == 4
    # A copy of a copy names the job that generated it.
    _, again = _run(store, gpt2, tmp_path, ["c d"], reuse=True)
    assert again[0]["reused_from"] == first
    # Without --reuse, nothing is copied.
    plain, fresh = _run(store, gpt2, tmp_path, ["a b"], reuse=False)
    assert "reused_from" not in fresh[0] and view_job(store, plain).to_dict()["reused"] == 0
    # Other params, another seed, another prompt: generated, not copied.
    _, other = _run(store, gpt2, tmp_path, ["a b"], reuse=True, max_new_tokens=5)
    _, seeded = _run(store, gpt2, tmp_path, ["a b"], reuse=True, seed=7)
    _, prompt = _run(store, gpt2, tmp_path, ["a b "], reuse=True)
    assert all("reused_from" not in ln[0] for ln in (other, seeded, prompt))


def test_sampling_is_reused_only_with_a_seed(store: Store, gpt2: HFEngine, tmp_path: Path) -> None:
    first, base = _run(store, gpt2, tmp_path, ["a b", "c d"], reuse=False, do_sample=True, seed=3)
    _, same = _run(store, gpt2, tmp_path, ["a b", "c d"], reuse=True, do_sample=True, seed=3)
    assert [ln.get("reused_from") for ln in same] == [first, first]
    assert [ln["output"] for ln in same] == [ln["output"] for ln in base]
    # Without a seed a sampled output is not reproducible: never reused, nor reused from.
    _run(store, gpt2, tmp_path, ["e f"], reuse=False, do_sample=True)
    _, unseeded = _run(store, gpt2, tmp_path, ["e f", "a b"], reuse=True, do_sample=True)
    assert all("reused_from" not in ln for ln in unseeded)


def _key(q: GenRequest, info: ModelInfo, *, truncate: bool = False) -> str | None:
    return reuse_keys([q], info, truncate=truncate, max_prompt_chars=100)[q.key]


def test_the_key_covers_model_revision_engine_and_rendered_prompt(gpt2: HFEngine) -> None:
    info = gpt2.info
    q = GenRequest(key=0, prompt="hi", params=GenerationParams())
    key = _key(q, info)
    assert key is not None and len(key) == 32
    chat = dataclasses.replace(q, messages=({"role": "user", "content": "hi"},))
    others = [
        _key(q, dataclasses.replace(info, revision="local-0")),
        _key(q, dataclasses.replace(info, model_ref="/other")),
        _key(q, dataclasses.replace(info, engine="hf+int8")),
        _key(q, info, truncate=True),
        _key(dataclasses.replace(q, seed=1), info),
        _key(dataclasses.replace(q, params=GenerationParams(max_new_tokens=5)), info),
        _key(chat, info),
        _key(dataclasses.replace(chat, chat_template="{{ messages }}"), info),
    ]
    assert key not in others and len(set(others)) == len(others)
    # The same request gives the same key, alone or among others (shared parts cached).
    many = reuse_keys(
        [dataclasses.replace(q, key=5, prompt="x"), q], info, truncate=False, max_prompt_chars=1
    )
    assert many[0] == key
    sampled = dataclasses.replace(q, params=GenerationParams(do_sample=True))
    assert _key(sampled, info) is None and _key(dataclasses.replace(sampled, seed=3), info)
