"""Submission into SQL: length-aware planning, batching into tasks, rejection rules."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sqlalchemy import select

from genqueue.params import GenerationParams
from genqueue.scheduler.errors import InputError, SpecError
from genqueue.scheduler.submit import JobSpec, submit_job
from genqueue.storage import status
from genqueue.storage.db import Store
from genqueue.storage.models import Item, Job, Task


def write(tmp: Path, records: list[dict[str, object]]) -> Path:
    path = tmp / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_length_aware_planning_keeps_every_item_once(store: Store, tmp_path: Path) -> None:
    rng = random.Random(5)
    lengths = [rng.randint(1, 300) for _ in range(1000)]
    src = write(
        tmp_path, [{"custom_id": f"c{i}", "prompt": "x" * n} for i, n in enumerate(lengths)]
    )
    spec = JobSpec(
        kind="generate",
        model="tiny-gpt2",
        chunk_size=32,
        planning_window=256,
        min_tasks_per_window=4,
    )
    done = submit_job(store, None, src, spec)
    assert done.total_items == 1000 and done.tasks == 32  # 4 windows of <=256 → 8,8,8,8 tasks
    with store.session() as s:
        items = s.execute(
            select(Item.idx, Item.custom_id, Item.task_id, Item.prompt)
            .where(Item.job_id == done.job_id)
            .order_by(Item.idx)
        ).all()
        tasks = s.execute(select(Task.id, Task.n_items).where(Task.job_id == done.job_id)).all()
    # Every input line is stored once, in input order, with its custom_id.
    assert [r.custom_id for r in items] == [f"c{i}" for i in range(1000)]
    assert [len(r.prompt) for r in items] == lengths
    # Every item belongs to exactly one task, and the task sizes add up.
    by_task: dict[int, list[int]] = {}
    for r in items:
        by_task.setdefault(r.task_id, []).append(len(r.prompt))
    assert {t.id: t.n_items for t in tasks} == {k: len(v) for k, v in by_task.items()}
    # Within a window, tasks hold similar lengths: the spread inside a task is far
    # smaller than across the job (random chunks would span ~the full 1..300 range).
    spreads = [max(v) - min(v) for v in by_task.values()]
    assert sum(spreads) / len(spreads) < 60


def test_tasks_are_sized_by_work_by_default(store: Store, tmp_path: Path) -> None:
    """Without a chunk_size, a task holds about `task_tokens` of estimated work (prompt
    characters / 4 + new tokens): many short prompts, few long ones; per-item
    max_new_tokens count; every item lands in exactly one task."""
    short = [{"prompt": "y" * 40} for _ in range(600)]  # ~11 + 10 tokens each
    long = [{"prompt": "x" * 4000} for _ in range(60)]  # ~1001 + 10 tokens each
    greedy = [{"prompt": "z" * 40, "params": {"max_new_tokens": 400}} for _ in range(40)]
    src = write(tmp_path, short + long + greedy)
    spec = JobSpec(
        kind="generate",
        model="tiny-gpt2",
        params=GenerationParams(max_new_tokens=10),
        task_tokens=2000,
        min_tasks_per_window=1,
    )
    done = submit_job(store, None, src, spec)
    with store.session() as s:
        rows = s.execute(
            select(Item.task_id, Item.prompt, Item.params).where(Item.job_id == done.job_id)
        ).all()
        job = s.get(Job, done.job_id)
    by_task: dict[int, list[int]] = {}
    for r in rows:
        cost = len(r.prompt) // 4 + 1 + (r.params or {}).get("max_new_tokens", 10)
        by_task.setdefault(r.task_id, []).append(cost)
    assert sum(len(v) for v in by_task.values()) == 700
    assert all(sum(v) <= 2000 for v in by_task.values())
    assert max(len(v) for v in by_task.values()) == 95  # short ones: 95 x 21 tokens
    assert all(sum(c > 1000 for c in v) <= 1 for v in by_task.values())  # long: one a task
    assert all(len(v) <= 4 for v in by_task.values() if min(v) > 400)  # 400 new: 4 x 411
    assert job is not None and job.chunk_size == -(-700 // len(by_task))  # mean, for retry


def test_rejected_input_leaves_no_job(store: Store, tmp_path: Path) -> None:
    src = write(tmp_path, [{"prompt": "ok"}] * 3 + [{"text": "wrong field"}])
    with pytest.raises(InputError) as err:
        submit_job(store, None, src, JobSpec(kind="generate", model="tiny-gpt2"))
    assert "line 4" in str(err.value) and "prompt" in str(err.value)
    with store.session() as s:
        assert s.scalar(select(Job.id)) is None
        assert s.scalar(select(Item.idx)) is None and s.scalar(select(Task.id)) is None


def test_empty_input_is_rejected(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text("\n\n")
    with pytest.raises(InputError, match="no records"):
        submit_job(store, None, src, JobSpec(kind="generate", model="tiny-gpt2"))


def test_model_checks_before_anything_is_stored(
    store: Store, tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    src = write(tmp_path, [{"prompt": "a"}])
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(SpecError, match="safetensors"):
        submit_job(store, None, src, JobSpec(kind="generate", model=str(empty)))
    with pytest.raises(SpecError, match="does not exist"):
        submit_job(store, None, src, JobSpec(kind="generate", model=str(tmp_path / "missing")))
    with pytest.raises(SpecError, match="max_new_tokens: 600 is not below the model's context"):
        submit_job(
            store,
            None,
            src,
            JobSpec(
                kind="generate",
                model=str(tiny_gpt2_dir),
                params=GenerationParams(max_new_tokens=600),
            ),
        )
    with pytest.raises(SpecError, match="priority"):
        submit_job(store, None, src, JobSpec(kind="generate", model="tiny-gpt2", priority=12))
    assert status.list_jobs(store) == []


def test_idempotency_key_creates_one_job(store: Store, tmp_path: Path) -> None:
    src = write(tmp_path, [{"prompt": "a"}, {"prompt": "b"}])
    spec = JobSpec(kind="generate", model="tiny-gpt2", idempotency_key="nightly-2026-11-29")
    first = submit_job(store, None, src, spec)
    again = submit_job(store, None, src, spec)
    assert first.created and not again.created
    assert again.job_id == first.job_id and again.total_items == 2
    assert len(status.list_jobs(store)) == 1


def test_small_jobs_are_cut_finer_and_longest_tasks_go_first(store: Store, tmp_path: Path) -> None:
    """A 100-item job is not 2 tasks of 64 (one worker would idle): at least 16 tasks,
    sent longest prompts first so the slow ones do not end up last."""
    src = write(tmp_path, [{"prompt": "x" * (i % 37 + 1)} for i in range(100)])
    done = submit_job(store, None, src, JobSpec(kind="generate", model="tiny-gpt2", chunk_size=64))
    assert done.tasks >= 16
    with store.session() as s:
        rows = s.execute(select(Item.task_id, Item.prompt).where(Item.job_id == done.job_id)).all()
    longest = {}
    for task_id, prompt in rows:
        longest[task_id] = max(longest.get(task_id, 0), len(prompt))
    in_send_order = [longest[t] for t in sorted(longest)]
    assert in_send_order == sorted(in_send_order, reverse=True)
