"""The job options `genqueue run` and `genqueue submit` share, defined once.

`with_job_options` grafts these parameters onto a Typer command's signature and hands
the command one `JobOptions` value, so both commands stay in step.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from genqueue.errors import GenqueueError
from genqueue.params import GenerationParams

_P = "Generation"
_J = "Job"

OPTIONS: list[tuple[str, Any, Any]] = [
    (
        "kind",
        Annotated[
            str,
            typer.Option(
                "--kind", "-k", help="generate | summarize | translate | qa", rich_help_panel=_J
            ),
        ],
        "generate",
    ),
    (
        "model",
        Annotated[
            str,
            typer.Option(
                "--model",
                "-m",
                help="HF hub id, local model directory, or tiny-gpt2 / tiny-t5 (built locally)",
                rich_help_panel=_J,
            ),
        ],
        ...,
    ),
    (
        "template",
        Annotated[
            str | None,
            typer.Option(
                help='Prompt template over record fields, e.g. "Sentiment of: {review}"',
                rich_help_panel=_J,
            ),
        ],
        None,
    ),
    (
        "revision",
        Annotated[
            str | None,
            typer.Option(help="Model revision (hub branch, tag or commit)", rich_help_panel=_J),
        ],
        None,
    ),
    (
        "input_format",
        Annotated[
            str | None,
            typer.Option(
                "--format",
                help="jsonl | csv | parquet (default: from the extension)",
                rich_help_panel=_J,
            ),
        ],
        None,
    ),
    (
        "target_lang",
        Annotated[
            str | None, typer.Option(help="translate: default target language", rich_help_panel=_J)
        ],
        None,
    ),
    (
        "source_lang",
        Annotated[
            str | None, typer.Option(help="translate: default source language", rich_help_panel=_J)
        ],
        None,
    ),
    (
        "chunk_size",
        Annotated[
            int | None,
            typer.Option(
                help="Items per task (default: sized by work, about 32k tokens of prompt + "
                "new tokens each, at most 1024 items)",
                rich_help_panel=_J,
            ),
        ],
        None,
    ),
    ("priority", Annotated[int, typer.Option(help="0..9, 9 most urgent", rich_help_panel=_J)], 5),
    (
        "metadata",
        Annotated[
            str | None, typer.Option(help="JSON object stored with the job", rich_help_panel=_J)
        ],
        None,
    ),
    (
        "deadline",
        Annotated[
            str | None,
            typer.Option(
                help="Completion window (30m, 24h, 2d) or ISO time; then the job ends 'expired'",
                rich_help_panel=_J,
            ),
        ],
        None,
    ),
    (
        "idempotency_key",
        Annotated[
            str | None,
            typer.Option(
                help="Submitting twice with the same key creates one job", rich_help_panel=_J
            ),
        ],
        None,
    ),
    (
        "truncate",
        Annotated[
            bool,
            typer.Option(
                help="Cut prompts that exceed the model's context instead of failing them",
                rich_help_panel=_J,
            ),
        ],
        False,
    ),
    (
        "trust_remote_code",
        Annotated[
            bool,
            typer.Option(help="Allow model code from the hub (off by default)", rich_help_panel=_J),
        ],
        False,
    ),
    (
        "params",
        Annotated[
            str | None, typer.Option(help="Generation params as a JSON object", rich_help_panel=_P)
        ],
        None,
    ),
    (
        "max_new_tokens",
        Annotated[
            int | None,
            typer.Option(help="New tokens per output, 1..32768 (default 64)", rich_help_panel=_P),
        ],
        None,
    ),
    (
        "min_new_tokens",
        Annotated[
            int | None,
            typer.Option(help="At least this many new tokens (default 0)", rich_help_panel=_P),
        ],
        None,
    ),
    (
        "temperature",
        Annotated[
            float | None,
            typer.Option(help="Sampling temperature, > 0 (default 1.0)", rich_help_panel=_P),
        ],
        None,
    ),
    (
        "top_p",
        Annotated[
            float | None,
            typer.Option(help="Nucleus sampling, in (0, 1] (default 1.0)", rich_help_panel=_P),
        ],
        None,
    ),
    (
        "top_k",
        Annotated[
            int | None,
            typer.Option(help="Top-k sampling, 0 = off (default 0)", rich_help_panel=_P),
        ],
        None,
    ),
    (
        "num_beams",
        Annotated[
            int | None,
            typer.Option(help="Beam search width, 1..64 (default 1)", rich_help_panel=_P),
        ],
        None,
    ),
    (
        "num_return_sequences",
        Annotated[
            int | None,
            typer.Option(
                help="Outputs per item, 1..64 (needs sampling or beams) (default 1)",
                rich_help_panel=_P,
            ),
        ],
        None,
    ),
    (
        "repetition_penalty",
        Annotated[
            float | None, typer.Option(help="> 0, 1.0 = off (default 1.0)", rich_help_panel=_P)
        ],
        None,
    ),
    (
        "no_repeat_ngram_size",
        Annotated[
            int | None,
            typer.Option(
                help="Never repeat n-grams of this size, 0 = off (default 0)", rich_help_panel=_P
            ),
        ],
        None,
    ),
    (
        "do_sample",
        Annotated[bool | None, typer.Option("--do-sample/--greedy", rich_help_panel=_P)],
        None,
    ),
    (
        "seed",
        Annotated[
            int | None,
            typer.Option(
                help="Seed for sampling; each item's output is reproducible", rich_help_panel=_P
            ),
        ],
        None,
    ),
    (
        "stop",
        Annotated[
            list[str] | None, typer.Option(help="Stop string (repeatable)", rich_help_panel=_P)
        ],
        None,
    ),
]
#: The generation params, in the model's order (the flags above set them one by one).
PARAM_NAMES = tuple(GenerationParams.model_fields)


class OptionError(GenqueueError):
    """Raised when a command-line option has an invalid value."""


@dataclass(frozen=True)
class JobOptions:
    values: dict[str, Any]

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.values.get("params"):
            try:
                out = json.loads(self.values["params"])
            except json.JSONDecodeError as exc:
                raise OptionError(f"--params is not valid JSON: {exc}") from exc
            if not isinstance(out, dict):
                raise OptionError("--params must be a JSON object")
        for name in PARAM_NAMES:
            value = self.values.get(name)
            if value is not None and value != []:
                out[name] = value
        return out

    def submit_kwargs(self) -> dict[str, Any]:
        v = self.values
        defaults = {k: v[k] for k in ("target_lang", "source_lang") if v.get(k)}
        meta: Any = {}
        if v.get("metadata"):
            try:
                meta = json.loads(v["metadata"])
            except json.JSONDecodeError as exc:
                raise OptionError(f"--metadata is not valid JSON: {exc}") from exc
            if not isinstance(meta, dict):
                raise OptionError("--metadata must be a JSON object")
        return {
            "kind": v["kind"],
            "model": v["model"],
            "template": v.get("template"),
            "params": self.params(),
            "defaults": defaults,
            "revision": v.get("revision"),
            "chunk_size": v.get("chunk_size"),
            "priority": v["priority"],
            "metadata": meta,
            "deadline": parse_deadline(v.get("deadline")),
            "idempotency_key": v.get("idempotency_key"),
            "truncate": v["truncate"],
            "trust_remote_code": v["trust_remote_code"],
            "format": v.get("input_format"),
        }


def parse_deadline(text: str | None) -> datetime | timedelta | None:
    """`90s`, `30m`, `24h`, `2d`, or an ISO 8601 time."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return timedelta(**{unit: float(m.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise OptionError(
            f"--deadline: {text!r} is neither a duration (30m, 24h, 2d) nor an "
            "ISO time (2026-12-01T08:00:00Z)"
        ) from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def with_job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the shared job options to a command; it receives them as `job: JobOptions`."""
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.name != "job"]
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
        for name, ann, default in OPTIONS
    ]

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        job = JobOptions({name: kwargs.pop(name) for name, _, _ in OPTIONS})
        return fn(job=job, **kwargs)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper
