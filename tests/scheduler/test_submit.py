"""Submission into SQL: length-aware planning, batching into tasks, rejection rules."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from genqueue.params import GenerationParams
from genqueue.scheduler.errors import IdempotencyConflict, InputError, SpecError
from genqueue.scheduler.submit import JobSpec, submit_job
from genqueue.storage import batches, status
from genqueue.storage.db import Store
from genqueue.storage.models import Batch, Item, Job, Task


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


@pytest.mark.parametrize(("n", "tasks"), [(256, 8), (64, 2), (20, 2), (1, 1), (8192, None)])
def test_small_jobs_spread_without_tasks_smaller_than_a_micro_batch(
    store: Store, tmp_path: Path, n: int, tasks: int | None
) -> None:
    """At least 16 tasks per window, but (sized by work) never under 32 items or half
    the window: a worker's micro-batches stay within one task."""
    src = write(tmp_path, [{"prompt": f"short prompt {i}"} for i in range(n)])
    done = submit_job(store, None, src, JobSpec(kind="generate", model="tiny-gpt2"))
    with store.session() as s:
        sizes = s.scalars(
            select(func.count()).where(Item.job_id == done.job_id).group_by(Item.task_id)
        ).all()
    assert sum(sizes) == n
    if tasks is None:  # a full window: 16 tasks or more (by work), of 512 items at most
        assert len(sizes) >= 16 and max(sizes) <= 512
    else:
        assert len(sizes) == tasks


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
    with pytest.raises(SpecError, match="system message goes with chat jobs"):
        submit_job(store, None, src, JobSpec(kind="generate", model="tiny-gpt2", system="Be brief"))
    assert status.list_jobs(store) == []


def test_idempotency_key_creates_one_job(store: Store, tmp_path: Path) -> None:
    src = write(tmp_path, [{"prompt": "a"}, {"prompt": "b"}])
    spec = JobSpec(kind="generate", model="tiny-gpt2", idempotency_key="nightly-2026-11-29")
    first = submit_job(store, None, src, spec)
    again = submit_job(store, None, src, spec)
    assert first.created and not again.created
    assert again.job_id == first.job_id and again.total_items == 2
    assert len(status.list_jobs(store)) == 1
    # The same key for another request is refused, naming the job it made.
    other = tmp_path / "other.jsonl"
    other.write_text(src.read_text())
    for changed, where in (
        (replace(spec, params=GenerationParams(max_new_tokens=2)), src),
        (spec, other),
        (replace(spec, template="Q: {prompt}"), src),
    ):
        with pytest.raises(IdempotencyConflict, match=first.job_id):
            submit_job(store, None, where, changed)
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


def openai_line(cid: str, model: str, url: str = "/v1/chat/completions", **body: object) -> dict:
    payload: dict[str, object] = {"model": model, **body}
    if url == "/v1/chat/completions":
        payload.setdefault("messages", [{"role": "user", "content": f"hi {cid}"}])
    else:
        payload.setdefault("prompt", f"once {cid}")
    return {"custom_id": cid, "method": "POST", "url": url, "body": payload}


def test_openai_lines_naming_two_models_become_one_batch(
    store: Store, tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    lines = [
        openai_line("a", "tiny-gpt2"),
        openai_line("b", str(tiny_gpt2_dir), "/v1/completions", max_tokens=5),
        openai_line("c", "tiny-gpt2", temperature=0.7, seed=4),
        openai_line("d", str(tiny_gpt2_dir), "/v1/completions"),
    ]
    done = submit_job(store, None, write(tmp_path, lines), JobSpec())  # detected, no --model
    assert done.is_batch and done.total_items == 4 and len(done.job_ids) == 2
    view = batches.view_batch(store, done.job_id)
    assert view.state == "queued" and view.counts.total == 4
    by_kind = {v.job.kind: v.job for v in view.jobs}
    assert by_kind["chat"].options["model_name"] == "tiny-gpt2"
    assert by_kind["generate"].model == str(tiny_gpt2_dir)
    with store.session() as s:
        rows = s.execute(select(Item.job_id, Item.idx, Item.custom_id, Item.params)).all()
    # Each item keeps its position in the file, whichever job it went to.
    assert sorted((r.idx, r.custom_id) for r in rows) == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    params = {r.custom_id: r.params for r in rows}
    assert params["b"] == {"max_new_tokens": 5}
    assert params["c"] == {"do_sample": True, "temperature": 0.7, "seed": 4}


def test_an_openai_file_with_bad_lines_lists_each_with_its_line(
    store: Store, tmp_path: Path
) -> None:
    lines = [
        openai_line("ok", "tiny-gpt2"),
        openai_line("emb", "tiny-gpt2", "/v1/embeddings"),
        openai_line("lp", "tiny-gpt2", logit_bias={"1": 2}),
        openai_line("ok", "tiny-gpt2"),
        {
            "custom_id": "nomodel",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": "x"},
        },
        openai_line("ghost", str(tmp_path / "no-such-model")),
        openai_line("", "tiny-gpt2"),
        openai_line("zero", "tiny-gpt2", max_tokens=0),
        openai_line("many", "tiny-gpt2", n=2),
    ]
    with pytest.raises(InputError) as err:
        submit_job(store, None, write(tmp_path, lines), JobSpec(), fmt="openai")
    problems = {p.line: p.message for p in err.value.problems}
    assert sorted(problems) == [2, 3, 5, 6, 7, 8, 9]
    assert problems[7] == "custom_id is empty; every OpenAI batch line needs one"
    # Param problems in the line's own terms: its body fields, not genqueue's names.
    assert problems[8].startswith("body.max_tokens: ") and "max_new_tokens" not in problems[8]
    assert problems[9] == "body.n asks for several completions: give body.temperature > 0 as well"
    assert problems[2].startswith("url '/v1/embeddings' is not supported")
    assert problems[3] == "body.logit_bias is refused: not supported"
    assert problems[5].startswith("body.model is missing")
    assert "does not exist" in problems[6]
    with store.session() as s:
        assert s.scalar(select(Job.id)) is None  # nothing left behind, batch row included
        assert s.scalar(select(Batch.id)) is None


def test_custom_ids_are_unique_across_a_batch_and_model_overrides(
    store: Store, tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    dup = [openai_line("x", "tiny-gpt2"), openai_line("x", str(tiny_gpt2_dir))]
    with pytest.raises(InputError, match=r"custom_id 'x' is used more than once \(lines 1, 2\)"):
        submit_job(store, None, write(tmp_path, dup), JobSpec())
    # An id genqueue made for a record without one is named as such.
    made = write(tmp_path, [{"prompt": "p"}, {"custom_id": "line-1", "prompt": "q"}])
    with pytest.raises(InputError, match=r"a record without custom_id gets the id 'line-1'"):
        submit_job(store, None, made, JobSpec(model="tiny-gpt2"))
    lines = [openai_line("a", "m-1"), openai_line("b", "m-2")]
    done = submit_job(store, None, write(tmp_path, lines), JobSpec(model="tiny-gpt2"))
    assert len(done.job_ids) == 1  # --model overrides every line's model


def test_chat_needs_a_chat_template(store: Store, tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    bare = tmp_path / "no-template"
    shutil.copytree(tiny_gpt2_dir, bare)
    (bare / "chat_template.jinja").unlink()
    src = write(tmp_path, [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(SpecError, match=r"has no chat template.*--chat-template FILE"):
        submit_job(store, None, src, JobSpec(kind="chat", model=str(bare)))
    # A template with a Jinja mistake is refused up front, not item by item in the worker.
    broken = JobSpec(kind="chat", model=str(bare), chat_template="{% for m in messages %}")
    with pytest.raises(SpecError) as err:
        submit_job(store, None, src, broken)
    assert str(err.value).startswith("chat_template is not a valid Jinja template: ")
    assert "(line 1)" in str(err.value)
    looped = "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{% endfor %}"
    submit_job(store, None, src, replace(broken, chat_template=looped))  # loop controls parse
    own = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    done = submit_job(store, None, src, JobSpec(kind="chat", model=str(bare), chat_template=own))
    job = status.view_job(store, done.job_id)
    assert job.job.chat_template == own and job.to_dict()["chat"] is True
    with pytest.raises(SpecError, match="--chat does not apply"):
        submit_job(store, None, write(tmp_path, [openai_line("a", "m")]), JobSpec(chat=True))


def test_prompts_that_cannot_fit_fail_at_submission(
    store: Store, tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    """On both databases: an item whose prompt certainly exceeds the context gets its
    result at submission, in a task that is already done; the rest are planned as
    usual; and a job whose every item failed so is finished at once."""
    huge = "word " * 200_000  # 1,000,000 characters against a 512-token context
    src = write(tmp_path, [{"prompt": "short"}, {"prompt": huge}, {"prompt": "also short"}])
    spec = JobSpec(model=str(tiny_gpt2_dir))
    job_id = submit_job(store, None, src, spec).job_id
    view = status.view_job(store, job_id)
    assert view.job.state == "queued"
    assert (view.counts.failed, view.counts.succeeded, view.counts.total) == (1, 0, 3)
    [failed] = [r for r in results_of(store, job_id)]
    assert (failed.idx, failed.status, failed.error_code) == (1, "failed", "prompt_too_long")
    with store.read() as s:
        tasks = s.scalars(select(Task).where(Task.job_id == job_id)).all()
        owners = {i.idx: i.task_id for i in s.scalars(select(Item).where(Item.job_id == job_id))}
    done = [t for t in tasks if t.state == "done"]
    assert len(done) == 1 and done[0].n_failed == 1 and owners[1] == done[0].id
    assert all(owners[i] != done[0].id for i in (0, 2))

    # With --truncate the worker cuts it instead: nothing fails at submission.
    kept = submit_job(store, None, src, replace(spec, truncate=True)).job_id
    assert status.view_job(store, kept).counts.failed == 0

    only = write(tmp_path, [{"prompt": huge}])
    alone = submit_job(store, None, only, spec).job_id
    assert status.view_job(store, alone).job.state == "failed"


def results_of(store: Store, job_id: str) -> list[Any]:
    from genqueue.storage.models import Result

    with store.read() as s:
        return list(s.scalars(select(Result).where(Result.job_id == job_id)))
