"""What a record means: the fields each job kind needs, how a record becomes a prompt,
and the reserved keys (`custom_id`, per-item `params`).

Default templates follow the T5/FLAN instruction style ("summarize: ..."), which
instruction-tuned causal LMs read well too. A job may give its own template instead;
the template then decides which fields a record needs.
"""

from __future__ import annotations

import functools
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from genqueue.errors import type_name
from genqueue.params import GenerationParams, describe_validation_error
from genqueue.scheduler.errors import RecordError, SpecError
from genqueue.scheduler.readers.checks import load_json, value_problem
from genqueue.settings import InputLimits

#: Job kinds. "chat" records carry a conversation (`messages`) instead of prompt fields.
KINDS = ("generate", "summarize", "translate", "qa", "chat")

#: Record keys that are metadata, not text: never required, never defaults.
RESERVED_FIELDS = ("custom_id", "params")

#: A custom_id is echoed in every output line; past this it is a mistake, not an id.
MAX_CUSTOM_ID_CHARS = 512

#: How many record field names an error message lists.
_FIELDS_SHOWN = 30

#: The widest width or precision a template's format spec may ask for: a width pads a
#: value, so an unbounded one turns a short field into a prompt of any size.
MAX_FORMAT_WIDTH = 1000

#: Python's format-spec mini-language for text and numbers:
#: [[fill]align][sign][z][#][0][width][grouping][.precision][type]
_FORMAT_SPEC = re.compile(
    r"(?:(?P<fill>.)?[<>=^])?[-+ ]?z?#?0?(?P<width>\d+)?[,_]?(?:\.(?P<precision>\d+))?"
    r"[bcdeEfFgGnosxX%]?",
    re.DOTALL,
)


@dataclass(frozen=True)
class _Kind:
    required: tuple[str, ...]
    optional: tuple[str, ...]
    full: str  # the default template when every optional field is present
    short: str  # ... and when one is absent or blank


_KINDS: dict[str, _Kind] = {
    # Records give `messages`; its prompt is rendered by the worker (chat.py).
    "chat": _Kind(("messages",), (), "", ""),
    "generate": _Kind(("prompt",), (), "{prompt}", "{prompt}"),
    "summarize": _Kind(("text",), (), "summarize: {text}", "summarize: {text}"),
    "translate": _Kind(
        ("text", "target_lang"),
        ("source_lang",),
        "translate {source_lang} to {target_lang}: {text}",
        "translate to {target_lang}: {text}",
    ),
    "qa": _Kind(
        ("question",),
        ("context",),
        "question: {question} context: {context}",
        "question: {question}",
    ),
}


@dataclass(frozen=True)
class JobInputSpec:
    """How a job turns input records into prompts, and the params per-item overrides
    are validated against."""

    kind: str
    #: Overrides the kind's default prompt: str.format-style "{field}" over record fields
    #: and `defaults` (record values win).
    template: str | None = None
    #: Job-level field values, used when a record lacks the field or leaves it blank.
    defaults: dict[str, str] = field(default_factory=dict)
    base_params: GenerationParams = field(default_factory=GenerationParams)
    #: Send each prompt as the user turn of a conversation, through the chat template
    #: (always true for kind "chat").
    chat: bool = False
    #: A system message for conversations that have none.
    system: str | None = None
    limits: InputLimits = field(default_factory=InputLimits)

    @property
    def is_chat(self) -> bool:
        return self.chat or self.kind == "chat"


def validate_spec(spec: JobInputSpec) -> None:
    """Check a job spec before any input is read, so a bad spec fails fast and once
    instead of once per record."""
    _kind(spec.kind)
    if spec.kind == "chat" and spec.template is not None:
        raise SpecError(
            "kind 'chat' takes each record's messages as they are; a template applies to "
            "the other kinds (use --chat to send a templated prompt as the user turn)"
        )
    if spec.system is not None and (not isinstance(spec.system, str) or not spec.system.strip()):
        raise SpecError("system: give the system message as non-empty text")
    if spec.template is not None:
        if not isinstance(spec.template, str):
            raise SpecError(f"template must be a string, got {type_name(spec.template)}")
        if not spec.template.strip():
            raise SpecError("template is empty; give a template such as 'summarize: {text}'")
        _compile(spec.template)
    if not isinstance(spec.defaults, Mapping):
        raise SpecError(f"defaults must be a mapping of field name to text, got {spec.defaults!r}")
    for name, value in spec.defaults.items():
        if not isinstance(name, str) or not name:
            raise SpecError(f"defaults: field names must be non-empty strings, got {name!r}")
        if name in RESERVED_FIELDS:
            raise SpecError(f"defaults: {name!r} is set per record, it cannot be a job default")
        if not isinstance(value, str):
            raise SpecError(
                f"defaults: {name!r} must be a string, got {type_name(value)} ({value!r})"
            )
    if not isinstance(spec.base_params, GenerationParams):
        raise SpecError("base_params must be a GenerationParams")


def render_prompt(spec: JobInputSpec, record: Mapping[str, Any]) -> str:
    """The prompt for one record: the job's template, or the kind's default one.

    Raises RecordError saying which field is missing, of the wrong type, or blank.
    """
    if spec.template is not None:
        return _render_template(spec.template, record, spec.defaults, spec.limits)
    kind = _kind(spec.kind)
    values: dict[str, str] = {}
    for name in kind.required:
        value = _lookup(name, record, spec.defaults)
        if value is None and name in record:
            raise RecordError(f"field {name!r} is null; kind {spec.kind!r} needs text in it")
        if value is None:
            hint = " (or set it as a job default)" if name == "target_lang" else ""
            raise RecordError(
                f"missing required field {name!r} for kind {spec.kind!r}{hint}; "
                f"{_describe_fields(record)}"
            )
        text = _text_field(name, value)
        if not text.strip():
            raise RecordError(f"field {name!r} is empty; kind {spec.kind!r} needs text in it")
        values[name] = text
    complete = True
    for name in kind.optional:
        value = _lookup(name, record, spec.defaults)
        # A blank optional field means "not given": "context: " would only confuse a model.
        if value is None or (isinstance(value, str) and not value.strip()):
            complete = False
            continue
        values[name] = _text_field(name, value)
    # Values are substituted, never parsed, so braces in the text are safe.
    return (kind.full if complete else kind.short).format_map(values)


def record_custom_id(value: Any, *, required: bool = False) -> str | None:
    """A record's custom_id as text (integers allowed), None when absent. `required`:
    a line without one is refused by the caller (OpenAI batch lines), so an empty one is
    not told to leave it out."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordError(
            f"custom_id must be a string or an integer, got {type_name(value)} ({_short(value)})"
        )
    text = str(value)
    if not text.strip():
        if required:
            raise RecordError("custom_id is empty; every OpenAI batch line needs one")
        raise RecordError("custom_id is empty; leave it out to get a generated id")
    if len(text) > MAX_CUSTOM_ID_CHARS:
        raise RecordError(
            f"custom_id is {len(text)} characters long; at most {MAX_CUSTOM_ID_CHARS} allowed"
        )
    return text


def record_params(
    value: Any,
    base: GenerationParams,
    *,
    json_text: bool = False,
    limits: InputLimits | None = None,
) -> dict[str, Any] | None:
    """A record's per-item param overrides, validated merged over the job's `base` params:
    only the keys the record set, coerced and JSON-ready; None when it set none.

    With `json_text` (CSV cells), a string is parsed as JSON and a blank one means none.
    """
    if value is None:
        return None
    if json_text and isinstance(value, str):
        if not value.strip():
            return None
        value = json_cell("params", value, limits or InputLimits())
    if not isinstance(value, dict):
        raise RecordError(
            'params must be an object of generation parameters, e.g. {"temperature": 0.7}, '
            f"got {type_name(value)} ({_short(value)})"
        )
    if not value:
        return None
    try:
        merged = base.merged(value)
    except ValidationError as exc:
        raise RecordError(f"invalid params: {describe_validation_error(exc)}") from None
    # Only the keys the item set: the job's params stay the one place for everything else.
    dumped = merged.model_dump(mode="json")
    return {key: dumped[key] for key in value}


def json_cell(name: str, text: str, limits: InputLimits) -> Any:
    """A text field holding JSON (a CSV cell with params or a conversation), parsed and
    held to the input limits like a JSON line."""
    try:
        value = load_json(text, limits)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{name} is not valid JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:
        raise RecordError(f"{name} is not valid JSON: {exc}") from None
    problem = value_problem(value, name, limits)
    if problem is not None:
        raise RecordError(problem)
    return value


# -- templates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    literal: str
    name: str | None
    format_spec: str
    conversion: str | None


@functools.lru_cache(maxsize=64)
def _compile(template: str) -> tuple[_Piece, ...]:
    """Parse a template once; only plain named fields are allowed, so a record can never
    reach attributes or indexes of Python objects."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SpecError(
            f"template {template!r} is not valid: {exc}; write {{{{ and }}}} for literal braces"
        ) from exc
    pieces = []
    for literal, name, format_spec, conversion in parsed:
        if name is not None:
            _check_field_name(template, name)
            if format_spec and ("{" in format_spec or "}" in format_spec):
                raise SpecError(
                    f"template {template!r}: nested fields in a format spec "
                    f"({{{name}:{format_spec}}}) are not supported"
                )
            if conversion not in (None, "s", "r", "a"):
                raise SpecError(
                    f"template {template!r}: unknown conversion !{conversion} in "
                    f"{{{name}!{conversion}}}; allowed: !s, !r, !a"
                )
            if format_spec:
                _check_format_spec(template, name, format_spec)
        pieces.append(_Piece(literal, name, format_spec or "", conversion))
    return tuple(pieces)


def _check_format_spec(template: str, name: str, format_spec: str) -> None:
    """Widths and precisions up to MAX_FORMAT_WIDTH: a format spec may align or round a
    value, but never blow it up."""
    found = _FORMAT_SPEC.fullmatch(format_spec)
    if found is None:
        raise SpecError(
            f"template {template!r}: {{{name}:{format_spec}}} is not a format spec for text "
            "or numbers (e.g. {name:>10} or {score:.2f})"
        )
    for part in ("width", "precision"):
        value = found.group(part)
        if value is not None and int(value) > MAX_FORMAT_WIDTH:
            raise SpecError(
                f"template {template!r}: {{{name}:{format_spec}}} asks for a {part} of "
                f"{int(value):,}; at most {MAX_FORMAT_WIDTH} is allowed (a {part} pads or "
                "expands the value, it must not make the prompt huge)"
            )


def _check_field_name(template: str, name: str) -> None:
    if name == "" or name.isdigit():
        raise SpecError(
            f"template {template!r}: positional field {{{name}}} is not allowed; "
            "name a record field, e.g. {text}"
        )
    if "." in name or "[" in name:
        raise SpecError(
            f"template {template!r}: {{{name}}} uses attribute or index access, which is "
            "not allowed; name a record field directly, e.g. {text}"
        )
    if name != name.strip():
        raise SpecError(
            f"template {template!r}: field {{{name}}} has spaces around its name; "
            f"write {{{name.strip()}}}"
        )


def _render_template(
    template: str,
    record: Mapping[str, Any],
    defaults: Mapping[str, str],
    limits: InputLimits,
) -> str:
    parts: list[str] = []
    size = 0
    for piece in _compile(template):
        parts.append(piece.literal)
        size += len(piece.literal)
        if piece.name is None:
            continue
        value = _lookup(piece.name, record, defaults)
        if value is None and piece.name in record:
            raise RecordError(
                f"template field {{{piece.name}}} is null in the record; give it a value "
                "(or set a job default)"
            )
        if value is None:
            where = f"; job defaults: {', '.join(defaults)}" if defaults else ""
            raise RecordError(
                f"template field {{{piece.name}}} is not in the record; "
                f"{_describe_fields(record)}{where}"
            )
        if isinstance(value, str) and not value.strip():
            # A blank review cell would be labelled as if it were one.
            raise RecordError(
                f"template field {{{piece.name}}} is empty in the record; give it text, "
                "or leave the record out"
            )
        text = _format_value(piece, value, limits.max_prompt_chars - size)
        parts.append(text)
        size += len(text)
        if size > limits.max_prompt_chars:
            raise RecordError(prompt_too_large(size, limits, at_least=True))
    prompt = "".join(parts)
    if not prompt.strip():
        raise RecordError("the prompt rendered from the template is empty")
    return prompt


def prompt_too_large(size: int, limits: InputLimits, *, at_least: bool = False) -> str:
    more = "at least " if at_least else ""
    return (
        f"the prompt is {more}{size:,} characters; at most {limits.max_prompt_chars:,} are "
        "allowed (GENQUEUE_MAX_PROMPT_CHARS)"
    )


def _format_value(piece: _Piece, value: Any, room: int) -> str:
    if isinstance(value, bool):
        # Inputs are JSON/CSV/Parquet, not Python: render booleans the way they were written.
        value = "true" if value else "false"
    elif not isinstance(value, str | int | float):
        raise RecordError(
            f"template field {{{piece.name}}} must be text or a number, "
            f"got {type_name(value)} ({_short(value)})"
        )
    if piece.conversion in ("r", "a") and isinstance(value, str) and len(value) > room:
        raise RecordError(
            f"template field {{{piece.name}}} is {len(value):,} characters, more than the "
            f"prompt limit leaves ({room:,} characters; GENQUEUE_MAX_PROMPT_CHARS)"
        )
    if piece.conversion == "r":
        value = repr(value)
    elif piece.conversion == "a":
        value = ascii(value)
    elif piece.conversion == "s":
        value = str(value)
    try:
        return format(value, piece.format_spec)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. 10**400 with :.2f
        raise RecordError(
            f"template field {{{piece.name}}} ({type_name(value)} {_short(value)}) cannot "
            f"be formatted with ':{piece.format_spec}': {exc}"
        ) from exc


# -- helpers -----------------------------------------------------------------------------


def _kind(kind: str) -> _Kind:
    try:
        return _KINDS[kind]
    except (KeyError, TypeError):
        raise SpecError(f"unknown job kind {kind!r}; allowed kinds: {', '.join(KINDS)}") from None


def _lookup(name: str, record: Mapping[str, Any], defaults: Mapping[str, str]) -> Any:
    """The record's value, else the job default when the record's is absent, null or blank;
    None when neither gives one."""
    value = record.get(name)
    blank = value is None or (isinstance(value, str) and not value.strip())
    if blank and name in defaults:
        return defaults[name]
    return value


def _text_field(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RecordError(
            f"field {name!r} must be a string, got {type_name(value)} ({_short(value)})"
        )
    return value


def _describe_fields(record: Mapping[str, Any]) -> str:
    names = [str(key) for key in record]
    if not names:
        return "the record has no fields"
    shown = ", ".join(names[:_FIELDS_SHOWN])
    more = f", ... ({len(names) - _FIELDS_SHOWN} more)" if len(names) > _FIELDS_SHOWN else ""
    return f"the record has: {shown}{more}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
