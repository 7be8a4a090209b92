"""Cutting a window of items into tasks: by length, so a task's prompts pad little, and
by work, so every task costs about the same."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: Items per task at most when tasks are sized by work.
MAX_AUTO_CHUNK = 1024
#: Spreading a small window over the workers never cuts its tasks (sized by work) below
#: this many items, or half the window: a worker's micro-batches never span tasks, so
#: 16-item tasks would run 16-item batches where 32 run faster.
MIN_SPREAD_ITEMS = 32
#: Characters per token, for estimating a prompt's length without its tokenizer (the
#: scheduler never loads one); English BPE vocabularies average about four.
CHARS_PER_TOKEN = 4


class Plannable(Protocol):
    @property
    def prompt(self) -> str: ...
    @property
    def params(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Sizing:
    """How a job's tasks are sized."""

    #: Items per task, exactly; None sizes tasks by work (about `task_tokens` each).
    chunk_size: int | None
    task_tokens: int
    #: A window is cut into at least this many tasks, so a small job spreads over every
    #: worker instead of a few big tasks.
    min_tasks_per_window: int
    #: The job's max_new_tokens and num_return_sequences (items may override them).
    new_tokens: int
    replies: int


def plan(window: Sequence[Plannable], sizing: Sizing) -> list[list[int]]:
    """Cut a window into tasks of similar prompt length (positions into the window).

    Longest prompts first: the slowest tasks start early and short ones fill the gaps at
    the end (longest-processing-time-first), so workers finish together. With a fixed
    chunk_size every task has that many items; otherwise each holds about
    `task_tokens` of estimated work (fewer long prompts, more short ones)."""
    cap = max(1, len(window) // max(1, sizing.min_tasks_per_window))
    order = sorted(range(len(window)), key=lambda i: len(window[i].prompt), reverse=True)
    if sizing.chunk_size is not None:
        size = min(sizing.chunk_size, cap)
        return [order[i : i + size] for i in range(0, len(order), size)]
    floor = min(MIN_SPREAD_ITEMS, -(-len(window) // 2))
    cap = min(max(cap, floor), MAX_AUTO_CHUNK)
    tasks: list[list[int]] = []
    current: list[int] = []
    budget = 0
    for i in order:
        item = window[i]
        new, n = sizing.new_tokens, sizing.replies
        if item.params:
            new = int(item.params.get("max_new_tokens", new))
            n = int(item.params.get("num_return_sequences", n))
        cost = len(item.prompt) // CHARS_PER_TOKEN + 1 + new * n
        if current and (budget + cost > sizing.task_tokens or len(current) >= cap):
            tasks.append(current)
            current, budget = [], 0
        current.append(i)
        budget += cost
    if current:
        tasks.append(current)
    return tasks
