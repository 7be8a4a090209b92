"""Submitting a job: stream, validate, plan tasks, store, then dispatch.

Items are read as a stream and written in windows, so memory stays flat for any input
size. Within a window, items are sorted by prompt length before being cut into tasks
(length-aware planning: a task's prompts pad little). The job is visible to workers only
once every item is stored and the input is clean; a rejected input leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from genqueue.params import GenerationParams
from genqueue.protocol import (
    TINY_MODELS,
    context_length,
    local_model_problem,
    queue_for,
    resolve_model_ref,
)
from genqueue.scheduler.dispatch import Dispatcher
from genqueue.scheduler.errors import MAX_PROBLEMS_SHOWN, InputError, LineProblem, SpecError
from genqueue.scheduler.inputs import ParsedItem, detect_format, read_items
from genqueue.scheduler.kinds import JobInputSpec, validate_spec
from genqueue.storage import dispatch, lifecycle, loading
from genqueue.storage.db import Store, utcnow
from genqueue.storage.models import Job
from genqueue.storage.status import view_job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    """Everything about a job except its input."""

    kind: str
    model: str
    params: GenerationParams = field(default_factory=GenerationParams)
    template: str | None = None
    defaults: dict[str, str] = field(default_factory=dict)
    revision: str | None = None
    #: Items per task, exactly. None (the default) sizes tasks by work instead: about
    #: `task_tokens` estimated tokens (prompt + new tokens) each, at most MAX_AUTO_CHUNK
    #: items, so a task of short prompts is not dominated by its fixed cost and a task of
    #: long ones does not run for minutes.
    chunk_size: int | None = None
    task_tokens: int = 32768
    priority: int = 5
    metadata: dict[str, Any] = field(default_factory=dict)
    deadline: datetime | timedelta | None = None
    idempotency_key: str | None = None
    truncate: bool = False
    trust_remote_code: bool = False
    #: Items sorted together by length before being cut into tasks (bounded memory).
    planning_window: int = 8192
    #: A window is cut into at least this many tasks (smaller than chunk_size if need
    #: be), so a small job still spreads over every worker instead of a few big tasks.
    min_tasks_per_window: int = 16


#: While reading a slow input, the submission tells the reconciler it is alive this often.
TOUCH_SECONDS = 30.0
#: Items per task at most when tasks are sized by work.
MAX_AUTO_CHUNK = 1024
#: Characters per token, for estimating a prompt's length without its tokenizer (the
#: scheduler never loads one); English BPE vocabularies average about four.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Submitted:
    job_id: str
    total_items: int
    tasks: int
    created: bool  # False when an idempotency key matched an existing job


def check_model(model: str, params: GenerationParams) -> str:
    """Resolve the model reference and catch what can be caught before any work: a local
    path that does not exist, a directory without safetensors weights, max_new_tokens
    beyond the model's context (read from config.json, no torch needed)."""
    ref = resolve_model_ref(model)
    if model in TINY_MODELS:
        return ref
    path = Path(ref)
    if not path.is_absolute():
        return ref  # a hub id: checked by the worker that downloads it
    problem = local_model_problem(path)
    if problem:
        hub = (
            ""
            if path.exists()
            else " (a local model directory, or a hub id like google/flan-t5-small)"
        )
        raise SpecError(f"model: {problem}{hub}")
    cfg_path = path / "config.json"
    if cfg_path.exists():
        limit = context_length(json.loads(cfg_path.read_text()))
        if limit is not None and params.max_new_tokens >= limit:
            raise SpecError(
                f"max_new_tokens: {params.max_new_tokens} is not below the model's context of "
                f"{limit} tokens; use at most {limit - 1}"
            )
    return ref


def _deadline(spec: JobSpec) -> datetime | None:
    if spec.deadline is None:
        return None
    if isinstance(spec.deadline, timedelta):
        return utcnow() + spec.deadline
    return spec.deadline


def _plan(
    window: list[ParsedItem], spec: JobSpec, new_tokens: int, replies: int
) -> list[list[int]]:
    """Cut a window into tasks of similar prompt length (positions into the window).

    Longest prompts first: the slowest tasks start early and short ones fill the gaps at
    the end (longest-processing-time-first), so workers finish together. With a fixed
    chunk_size every task has that many items; otherwise each holds about
    `spec.task_tokens` of estimated work (fewer long prompts, more short ones)."""
    cap = max(1, len(window) // max(1, spec.min_tasks_per_window))
    order = sorted(range(len(window)), key=lambda i: len(window[i].prompt), reverse=True)
    if spec.chunk_size is not None:
        size = min(spec.chunk_size, cap)
        return [order[i : i + size] for i in range(0, len(order), size)]
    cap = min(cap, MAX_AUTO_CHUNK)
    tasks: list[list[int]] = []
    current: list[int] = []
    budget = 0
    for i in order:
        item = window[i]
        new, n = new_tokens, replies
        if item.params:
            new = int(item.params.get("max_new_tokens", new))
            n = int(item.params.get("num_return_sequences", n))
        cost = len(item.prompt) // CHARS_PER_TOKEN + 1 + new * n
        if current and (budget + cost > spec.task_tokens or len(current) >= cap):
            tasks.append(current)
            current, budget = [], 0
        current.append(i)
        budget += cost
    if current:
        tasks.append(current)
    return tasks


def submit_job(
    store: Store,
    dispatcher: Dispatcher | None,
    source: str | Path | BinaryIO,
    spec: JobSpec,
    *,
    fmt: str | None = None,
    input_name: str | None = None,
) -> Submitted:
    """Validate and store a job, then send its tasks (when a dispatcher is given; else
    the reconciler sends them). Raises InputError/SpecError with every problem found."""
    if spec.chunk_size is not None and not 1 <= spec.chunk_size <= 100_000:
        raise SpecError(f"chunk_size: {spec.chunk_size} is out of range (1..100000)")
    if spec.task_tokens < 1:
        raise SpecError(f"task_tokens: {spec.task_tokens} must be at least 1")
    if not 0 <= spec.priority <= 9:
        raise SpecError(f"priority: {spec.priority} is out of range (0..9, 9 most urgent)")
    input_spec = JobInputSpec(
        kind=spec.kind, template=spec.template, defaults=spec.defaults, base_params=spec.params
    )
    validate_spec(input_spec)
    name = input_name or (str(source) if isinstance(source, str | Path) else "<stdin>")
    fmt = detect_format(name if isinstance(source, str | Path) else "-", fmt)
    model_ref = check_model(spec.model, spec.params)
    created = loading.create_job(
        store,
        kind=spec.kind,
        model=model_ref,
        revision=spec.revision,
        queue=queue_for(model_ref, spec.revision),
        template=spec.template,
        params=spec.params.model_dump(mode="json"),
        chunk_size=spec.chunk_size or 0,  # 0 until planned (see open_job)
        priority=spec.priority,
        meta=spec.metadata,
        input_name=name,
        idempotency_key=spec.idempotency_key,
        deadline_at=_deadline(spec),
        options={
            "truncate": spec.truncate,
            "trust_remote_code": spec.trust_remote_code,
            "defaults": spec.defaults,
        },
    )
    if isinstance(created, str):
        view = view_job(store, created)
        return Submitted(created, view.job.total_items, 0, created=False)
    job = created

    early = dispatcher is not None

    def send_window(task_ids: list[int]) -> None:
        nonlocal early
        assert dispatcher is not None
        if not early:
            return
        try:
            dispatcher.send(store, [(t, job.queue, job.priority) for t in task_ids])
        except Exception as exc:  # the broker is away: the rest goes when the job opens
            early = False
            log.warning("job %s: sending tasks while loading failed (%s)", job.id, exc)

    try:
        total, n_tasks = _load(
            store,
            job,
            read_items(source, input_spec, fmt=fmt),
            spec,
            name,
            send_window if dispatcher is not None else None,
        )
    except BaseException:
        lifecycle.delete_job(store, job.id)
        raise
    # A work-sized job records its mean task size: what `retry` cuts new tasks by.
    loading.open_job(store, job.id, total, chunk_size=spec.chunk_size or -(-total // n_tasks))
    if dispatcher is not None:  # the last window (the whole job, when it fits in one)
        try:
            dispatcher.send(
                store, dispatch.tasks_to_send(store, older_than=utcnow(), job_id=job.id)
            )
        except Exception as exc:
            # The job is stored and open: the reconciler sends what is left.
            log.warning("job %s: sending its tasks failed (%s); the reconciler will", job.id, exc)
    return Submitted(job.id, total, n_tasks, created=True)


def _load(
    store: Store,
    job: Job,
    stream: Iterable[ParsedItem | LineProblem],
    spec: JobSpec,
    name: str,
    send_window: Callable[[list[int]], None] | None,
) -> tuple[int, int]:
    """Store the input window by window. With `send_window`, each full window's tasks are
    sent once stored, so on a large input workers start while the rest is read; the
    job stays `submitting` (it cannot end) until every item is stored. A problem found
    later stops those tasks and the whole job is rejected and removed. The last window
    (all of an input that fits in one) is sent only after the whole input was checked."""
    problems: list[LineProblem] = []
    n_problems = 0
    window: list[ParsedItem] = []
    next_idx = 0
    n_tasks = 0

    def flush(final: bool = False) -> None:
        nonlocal next_idx, n_tasks
        if not window:
            return
        plan = _plan(window, spec, spec.params.max_new_tokens, spec.params.num_return_sequences)
        items = [
            loading.NewItem(
                line=it.line,
                custom_id=it.custom_id or f"line-{it.line}",
                prompt=it.prompt,
                params=it.params,
            )
            for it in window
        ]
        task_ids = loading.add_chunk(store, job, next_idx, items, plan)
        next_idx += len(window)
        n_tasks += len(plan)
        window.clear()
        if send_window is not None and not final:
            send_window(task_ids)

    touched = time.monotonic()
    for entry in stream:
        if time.monotonic() - touched > TOUCH_SECONDS:  # a slow input is not an abandoned one
            loading.touch_submission(store, job.id)
            touched = time.monotonic()
        if isinstance(entry, LineProblem):
            n_problems += 1
            if len(problems) < MAX_PROBLEMS_SHOWN:
                problems.append(entry)
            if n_problems == 1 and n_tasks and send_window is not None:
                lifecycle.stop_job(store, job.id)  # workers drop its tasks after a micro-batch
            window.clear()  # stop storing: the job will be rejected anyway
            continue
        if n_problems:
            continue  # keep reading to count every problem
        window.append(entry)
        if len(window) >= spec.planning_window:
            flush()
    if not n_problems:
        flush(final=True)
    if not n_problems:
        for cid, lines in loading.duplicate_custom_ids(store, job.id):
            n_problems += 1
            problems.append(
                LineProblem(
                    line=lines[0],
                    message=f"custom_id {cid!r} is used more than once (lines "
                    f"{', '.join(map(str, lines))}); custom_id must be unique within a job",
                    custom_id=cid,
                )
            )
    if n_problems:
        raise InputError(problems, n_problems, name)
    if next_idx == 0:
        raise InputError([LineProblem(line=0, message="the input has no records")], 1, name)
    return next_idx, n_tasks
