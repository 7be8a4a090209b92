"""The job options `genqueue run` and `genqueue submit` share, defined once.

`JOB_OPTIONS` is an option group (see options.py): both commands receive one
`JobOptions` value. The generation flags come from `GenerationParams` itself, so a new
decoding parameter is a new flag without touching this file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from genqueue import durations, formats, postprocess
from genqueue.cli.errors import OptionError
from genqueue.cli.options import OptionGroup, Param
from genqueue.params import GenerationParams, field_range

_P = "Generation"
_J = "Job"


def _opt(name: str, ann: Any, default: Any, *decls: str, help: str, **bounds: Any) -> Param:
    flag = "--" + name.replace("_", "-")
    if ann is bool:
        flag = f"{flag}/--no-{flag[2:]}"
    option = typer.Option(*(decls or (flag,)), help=help, rich_help_panel=_J, **bounds)
    return (name, Annotated[ann, option], default)


_JOB: tuple[Param, ...] = (
    _opt(
        "kind", str, "generate", "--kind", "-k", help="generate | summarize | translate | qa | chat"
    ),
    _opt(
        "model",
        str | None,
        None,
        "--model",
        "-m",
        help="HF hub id, local model directory, or tiny-gpt2 / tiny-t5 (built locally); "
        "required unless the input is OpenAI batch lines, whose body.model it overrides",
    ),
    _opt(
        "template",
        str | None,
        None,
        help='Prompt template over record fields, e.g. "Sentiment of: {review}"',
    ),
    _opt("revision", str | None, None, help="Model revision (hub branch, tag or commit)"),
    _opt(
        "input_format",
        str | None,
        None,
        "--format",
        help=f"{' | '.join(formats.names('input'))} (default: from the extension)",
    ),
    _opt(
        "chat",
        bool,
        False,
        help="Send each prompt through the model's chat template as the user turn "
        "(instruction-tuned models); kind chat always does",
    ),
    _opt("system", str | None, None, help="A system message for conversations without one"),
    _opt(
        "chat_template",
        Path | None,
        None,
        help="A Jinja chat template file to use instead of the model's (stored with the job)",
    ),
    _opt("target_lang", str | None, None, help="translate: default target language"),
    _opt("source_lang", str | None, None, help="translate: default source language"),
    _opt(
        "chunk_size",
        int | None,
        None,
        help="Items per task (default: sized by work, about 32k tokens of prompt + new "
        "tokens each, at most 1024 items)",
        min=1,
        max=100_000,
    ),
    _opt("priority", int, 5, help="0..9, 9 most urgent"),
    _opt("metadata", str | None, None, help="JSON object stored with the job"),
    _opt(
        "deadline",
        str | None,
        None,
        help="Completion window (30m, 24h, 2d) or ISO time; then the job ends 'expired'",
    ),
    _opt(
        "idempotency_key",
        str | None,
        None,
        help="Submitting twice with the same key creates one job",
    ),
    _opt(
        "truncate",
        bool,
        False,
        help="Cut prompts that exceed the model's context instead of failing them",
    ),
    _opt(
        "reuse",
        bool,
        False,
        help="Copy the result of any item identical to one that already succeeded "
        "(same model revision, engine, params with seed, and prompt) instead of "
        "generating it again",
    ),
    _opt(
        "trust_remote_code",
        bool,
        False,
        help="Ask for model code from the model's repository; only workers started with "
        "--trust-remote-code run such a job (off by default)",
    ),
)


def _generation_params() -> tuple[Param, ...]:
    """A flag per generation parameter, each unset by default (the job then uses the
    parameter's own default), with its allowed range and default in the help."""
    out: list[Param] = [
        (
            "params",
            Annotated[
                str | None,
                typer.Option(help="Generation params as a JSON object", rich_help_panel=_P),
            ],
            None,
        )
    ]
    for name, info in GenerationParams.model_fields.items():
        help_text = info.description or ""
        notes = [n for n in (field_range(name, info),) if n]
        if info.default not in (None, (), False):
            notes.append(f"default {info.default}")
        if notes:
            help_text += f" ({'; '.join(notes)})"
        ann: Any
        if name == "do_sample":
            decl, ann = "--do-sample/--greedy", bool | None
        elif name in ("stop", "choices"):
            decl, ann = ("--stop" if name == "stop" else "--choice"), list[str] | None
        elif name == "json_schema":
            decl, ann = "--json-schema", str | None
            help_text = "The output is JSON valid against this schema: a file, or inline JSON"
        elif name == "postprocess":
            decl, ann = "--postprocess", str | None
            steps = "; ".join(
                f"{s.name}{':N' if s.takes_number else ''}: {s.help}"
                for s in postprocess.STEPS.values()
            )
            help_text = f"Post-processing steps, comma-separated ({steps})"
        elif info.annotation is bool:
            flag = "--" + name.replace("_", "-")
            decl, ann = f"{flag}/--no-{flag[2:]}", bool | None
        else:
            decl, ann = "--" + name.replace("_", "-"), info.annotation
            ann = ann | None
        option = typer.Option(decl, help=help_text, rich_help_panel=_P)
        out.append((name, Annotated[ann, option], None))
    return tuple(out)


@dataclass(frozen=True)
class JobOptions:
    """What the user typed, for building a submission."""

    values: dict[str, Any]

    def params(self) -> dict[str, Any]:
        """The generation params: --params JSON, overridden by each flag given."""
        out: dict[str, Any] = {}
        if self.values.get("params"):
            out = _json_object("--params", self.values["params"])
        for name in GenerationParams.model_fields:
            value = self.values.get(name)
            if value is not None and value != []:
                out[name] = _json_schema(value) if name == "json_schema" else value
        return out

    def submit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `Client.submit`."""
        v = self.values
        return {
            "kind": v["kind"],
            "model": v["model"],
            "template": v.get("template"),
            "params": self.params(),
            "defaults": {k: v[k] for k in ("target_lang", "source_lang") if v.get(k)},
            "revision": v.get("revision"),
            "chunk_size": v.get("chunk_size"),
            "priority": v["priority"],
            "metadata": _json_object("--metadata", v["metadata"]) if v.get("metadata") else {},
            "deadline": parse_deadline(v.get("deadline")),
            "idempotency_key": v.get("idempotency_key"),
            "truncate": v["truncate"],
            "reuse": v["reuse"],
            "trust_remote_code": v["trust_remote_code"],
            "chat": v["chat"],
            "system": v.get("system"),
            "chat_template": _read_template(v.get("chat_template")),
            "format": v.get("input_format"),
        }


JOB_OPTIONS = OptionGroup(_JOB + _generation_params(), JobOptions)


def _read_template(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"--chat-template: cannot read {path}: {exc}") from exc


def _json_schema(value: str) -> dict[str, Any]:
    """--json-schema: inline JSON (starts with `{`) or a file holding it."""
    if value.lstrip().startswith("{"):
        return _json_object("--json-schema", value)
    try:
        text = Path(value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(
            f"--json-schema: cannot read {value}: {exc} (give a file or inline JSON)"
        ) from exc
    return _json_object(f"--json-schema {value}", text)


def _json_object(flag: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OptionError(f"{flag} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise OptionError(f"{flag} must be a JSON object")
    return value


def parse_deadline(text: str | None) -> datetime | timedelta | None:
    """`--deadline`: `90s`, `30m`, `24h`, `2d`, or an ISO 8601 time."""
    try:
        return durations.parse_deadline(text)
    except ValueError as exc:
        raise OptionError(f"--deadline: {exc}") from None
