"""The scheduler's errors: one root (`SchedulerError`), a sub-root per kind of request
(`SubmissionError` for a job that is refused, `ExportError` for results that cannot be
written), and a class per way that happens.

Every message says what is wrong and how to fix it, because it ends up in front of the
user who made the request (the CLI's output, or the exception the Python client raises).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from genqueue.errors import GenqueueError

#: How many line problems an `InputError` message lists before "... and N more".
MAX_PROBLEMS_SHOWN = 20


class SchedulerError(GenqueueError):
    """Raised when the scheduler refuses a request (the root of the scheduler's errors)."""


class SubmissionError(SchedulerError):
    """Raised when a job cannot be accepted (the sub-root of submission problems)."""


@dataclass(frozen=True)
class LineProblem:
    """One input record that cannot become an item: where it is and what is wrong."""

    line: int
    message: str
    custom_id: str | None = None
    #: Reading cannot go on past this problem (an input limit, a CSV field that never
    #: ends): the reader stops, and the input is rejected with what was found so far.
    fatal: bool = False

    def __str__(self) -> str:
        # Line 0 is the input as a whole (it has no records, say).
        text = f"line {self.line}: {self.message}" if self.line > 0 else self.message
        if self.custom_id is not None:
            text += f" (custom_id {self.custom_id!r})"
        return text


class InputError(SubmissionError):
    """Raised when some input records are invalid; the whole job is rejected before
    anything is enqueued, and the message lists the first problems."""

    def __init__(self, problems: Sequence[LineProblem], total_problems: int, source: str) -> None:
        self.problems = list(problems)
        self.total_problems = max(total_problems, len(self.problems))
        self.source = source
        shown = self.problems[:MAX_PROBLEMS_SHOWN]
        lines = [
            f"{source}: {self.total_problems} problem(s) in the input; nothing was submitted:",
            *(f"  {problem}" for problem in shown),
        ]
        if self.total_problems > len(shown):
            lines.append(f"  ... and {self.total_problems - len(shown)} more")
        super().__init__("\n".join(lines))


class IdempotencyConflict(SubmissionError):
    """Raised when an idempotency key that already made a job (or batch) comes with
    another request: other input, options or params. The message names what it made."""


class SpecError(SubmissionError):
    """Raised for an invalid job spec (unknown kind, bad parameter, bad template); the
    message names the field and what is allowed."""


class InputFormatError(SubmissionError):
    """Raised when the input cannot be read at all (missing file, unknown format, not
    UTF-8 text, corrupt Parquet or gzip); the message says what and how to fix it."""


class RecordError(SubmissionError):
    """Raised when one record cannot become a prompt; readers turn it into a LineProblem."""


class ExportError(SchedulerError):
    """Raised when results cannot be written: an unknown format, an unwritable path."""
