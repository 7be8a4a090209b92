"""Storing an input window by window: into one job, or into the jobs of a batch (one per
model an input names), with bounded memory for any input size.

Each job's items are kept in a window of `planning_window` items (and at most
`window_chars` characters of prompts, so long documents do not pile up in memory),
planned by length (planning.py) and stored when it fills. With a dispatcher, a full
window's tasks are sent at once, so on a large input workers start while the rest is read; jobs stay
`submitting` (they cannot end) until every item is stored. A problem found later stops
that work, and the whole submission is rejected and removed by the caller. The last
window of each job is sent only after the whole input was checked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from genqueue.scheduler.dispatch import Dispatcher
from genqueue.scheduler.errors import MAX_PROBLEMS_SHOWN, InputError, LineProblem
from genqueue.scheduler.inputs import ParsedItem
from genqueue.scheduler.planning import Sizing, plan
from genqueue.scheduler.promptfit import PromptFit
from genqueue.storage import lifecycle, loading
from genqueue.storage.db import Store
from genqueue.storage.models import Job

log = logging.getLogger(__name__)

#: While reading a slow input, the submission tells the reconciler it is alive this often.
TOUCH_SECONDS = 30.0
#: Prompt characters a window holds at most before it is stored.
WINDOW_CHARS = 16 * 1024 * 1024


@dataclass
class Loading:
    """One job being loaded."""

    job: Job
    sizing: Sizing
    window: list[loading.NewItem] = field(default_factory=list)
    window_chars: int = 0
    items: int = 0
    tasks: int = 0
    #: Whether full windows are still sent as they are stored (until a send fails).
    early: bool = True
    #: Finds prompts that cannot fit the model (None: the workers decide every one).
    fit: PromptFit | None = None


#: Finds (or creates) the job an item belongs to, or says why the item has none.
JobFor = Callable[[ParsedItem], Loading | str]


class Loader:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher | None,
        *,
        name: str,
        planning_window: int,
        window_chars: int = WINDOW_CHARS,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.name = name
        self.planning_window = planning_window
        self.window_chars = window_chars
        self.jobs: list[Loading] = []
        self.problems: list[LineProblem] = []
        self.n_problems = 0

    def add_job(self, job: Job, sizing: Sizing, fit: PromptFit | None = None) -> Loading:
        target = Loading(job, sizing, early=self.dispatcher is not None, fit=fit)
        self.jobs.append(target)
        return target

    def load(self, stream: Iterable[ParsedItem | LineProblem], job_for: JobFor) -> int:
        """Store every item (its position in the input as its index); returns how many.
        Raises InputError listing the problems when there is any (nothing is sent then
        but full windows of the jobs already at work, which are stopped)."""
        touched = time.monotonic()
        idx = 0
        for entry in stream:
            if time.monotonic() - touched > TOUCH_SECONDS:  # slow, not abandoned
                for target in self.jobs:
                    loading.touch_submission(self.store, target.job.id)
                touched = time.monotonic()
            if isinstance(entry, ParsedItem):
                found = job_for(entry)
                if isinstance(found, str):
                    entry = LineProblem(entry.line, found, entry.custom_id)
            if isinstance(entry, LineProblem):
                self._problem(entry)
                if entry.fatal:
                    break  # the reader cannot go on (an input limit)
                continue
            if self.n_problems:
                idx += 1
                continue  # keep reading to count every problem
            assert not isinstance(found, str)
            found.window.append(
                loading.NewItem(
                    idx=idx,
                    line=entry.line,
                    custom_id=entry.custom_id or f"line-{entry.line}",
                    prompt=entry.prompt,
                    params=entry.params,
                    messages=entry.messages,
                    rejected=_rejection(found, entry),
                )
            )
            idx += 1
            found.window_chars += len(entry.prompt)
            if len(found.window) >= self.planning_window or found.window_chars >= self.window_chars:
                self._flush(found, final=False)
        if not self.n_problems:
            for target in self.jobs:
                self._flush(target, final=True)
            self._check_custom_ids()
        if self.n_problems:
            raise InputError(self.problems, self.n_problems, self.name)
        if idx == 0:
            raise InputError(
                [LineProblem(line=0, message="the input has no records")], 1, self.name
            )
        return idx

    def _problem(self, problem: LineProblem) -> None:
        self.n_problems += 1
        if len(self.problems) < MAX_PROBLEMS_SHOWN:
            self.problems.append(problem)
        if self.n_problems == 1:
            for target in self.jobs:
                target.window.clear()  # stop storing: the input will be rejected anyway
                target.window_chars = 0
                if target.tasks and self.dispatcher is not None:
                    lifecycle.stop_job(self.store, target.job.id)  # stop work on it

    def _flush(self, target: Loading, *, final: bool) -> None:
        if not target.window:
            return
        runnable = [pos for pos, it in enumerate(target.window) if it.rejected is None]
        planned = plan([target.window[pos] for pos in runnable], target.sizing)
        tasks = [[runnable[i] for i in members] for members in planned]
        task_ids = loading.add_chunk(self.store, target.job, target.window, tasks)
        target.items += len(target.window)
        target.tasks += len(tasks)
        target.window.clear()
        target.window_chars = 0
        if final or not target.early or self.dispatcher is None:
            return
        job = target.job
        try:
            self.dispatcher.send(self.store, [(t, job.queue, job.priority) for t in task_ids])
        except Exception as exc:  # the broker is away: the rest goes when the job opens
            target.early = False
            log.warning("job %s: sending tasks while loading failed (%s)", job.id, exc)

    def _check_custom_ids(self) -> None:
        ids = [target.job.id for target in self.jobs]
        where = "a batch" if len(ids) > 1 else "a job"
        for cid, lines in loading.duplicate_custom_ids(self.store, ids):
            self.n_problems += 1
            # A record without a custom_id gets `line-N`, which another may name too.
            generated = (
                f" (a record without custom_id gets the id {cid!r}; give the records their own ids)"
                if cid.startswith("line-") and cid[5:].isdigit()
                else ""
            )
            self.problems.append(
                LineProblem(
                    line=lines[0],
                    message=f"custom_id {cid!r} is used more than once (lines "
                    f"{', '.join(map(str, lines))}); custom_id must be unique within "
                    f"{where}{generated}",
                    custom_id=cid,
                )
            )


def _rejection(target: Loading, item: ParsedItem) -> tuple[str, str] | None:
    """(code, message) when the item's prompt certainly cannot fit its model. Only plain
    prompts: a chat template may drop parts of a conversation (earlier reasoning, old
    turns), and --truncate drops old turns, so conversations are left to the worker."""
    if target.fit is None or item.messages is not None:
        return None
    new_tokens = target.sizing.new_tokens
    if item.params and "max_new_tokens" in item.params:
        new_tokens = int(item.params["max_new_tokens"])
    found = target.fit.check(item.prompt, new_tokens)
    return None if found is None else (found.code, found.message)
