"""Seeded sampling end to end: the same job gives the same text per item however it is
cut into tasks and micro-batches and spread over workers (the README's promise)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from genqueue.client import Client
from genqueue.settings import Settings
from tests.integration.conftest import Deployment

pytestmark = pytest.mark.slow


def records(n: int) -> list[dict[str, Any]]:
    rng = random.Random(3)
    words = ["the", "cat", "sat", "on", "a", "warm", "mat", "while", "rain", "fell"]
    words += ["over", "quiet", "hills"]
    out: list[dict[str, Any]] = []
    for i in range(n):
        rec: dict[str, Any] = {
            "custom_id": f"r{i}",
            "prompt": " ".join(rng.choice(words) for _ in range(rng.randint(1, 40))),
        }
        if i % 17 == 0:
            rec["params"] = {"seed": 99}  # an item's own seed
        elif i % 13 == 0:
            rec["params"] = {"num_return_sequences": 2}
        out.append(rec)
    return out


def run_once(
    tmp: Path,
    redis_url: str,
    model: str,
    *,
    workers: int,
    chunks: tuple[int | None, ...],
    **settings: Any,
) -> list[dict[str, Any]]:
    """One deployment (its workers' settings), one job per chunk size; each job's
    outputs by custom_id."""
    db = tmp / f"w{workers}-{settings.get('token_budget', 'd')}.db"
    s = Settings(
        database_url=f"sqlite:///{db}",
        broker_url=redis_url,
        reconcile_interval=0.5,
        dispatch_grace_seconds=1,
        **settings,
    )
    dep = Deployment(settings=s, client=Client(settings=s))
    dep.start_reconciler()
    outputs = []
    try:
        dep.start_workers(model, processes=workers)
        jobs = [
            dep.client.submit(
                records(120),
                kind="generate",
                model=model,
                do_sample=True,
                temperature=0.9,
                top_k=50,
                seed=1234,
                max_new_tokens=8,
                chunk_size=chunk,
            )
            for chunk in chunks
        ]
        for job in jobs:
            st = dep.client.wait(job, timeout=240, poll=0.3)
            assert st["state"] == "completed", st
            lines = list(dep.client.results(job))
            assert len(lines) == 120
            outputs.append({ln["custom_id"]: ln.get("outputs") or ln["output"] for ln in lines})
    finally:
        dep.close()
    return outputs


def test_seeded_outputs_do_not_depend_on_tasks_batches_or_workers(
    redis_url: str, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    model = str(tiny_gpt2_dir)
    # One worker: tasks of 7, and tasks sized by the planner, in micro-batches of <= 64.
    one, sized = run_once(tmp_path, redis_url, model, workers=1, chunks=(7, None))
    # Two workers, tasks of 32, micro-batches of at most 3 rows or 256 padded tokens.
    [two] = run_once(
        tmp_path, redis_url, model, workers=2, chunks=(32,), token_budget=256, max_batch_size=3
    )
    assert one == two == sized
    assert len({str(v) for v in one.values()}) > 100  # sampled, not one repeated text
    assert isinstance(one["r13"], list) and len(one["r13"]) == 2
