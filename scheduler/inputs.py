"""Job input as items: the format of a source, and each record validated and rendered
into a prompt (the byte-level readers are in readers/)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genqueue import formats
from genqueue.scheduler.chat import Message, as_conversation, flatten, record_messages
from genqueue.scheduler.errors import InputFormatError, LineProblem, RecordError, SpecError
from genqueue.scheduler.kinds import (
    JobInputSpec,
    json_cell,
    prompt_too_large,
    record_custom_id,
    record_params,
    render_prompt,
    validate_spec,
)
from genqueue.scheduler.openai_format import in_body_terms, is_openai_line, parse_request
from genqueue.scheduler.readers import (
    FORMATS,
    Record,
    Records,
    Source,
    detection_name,
    iter_records,
)

__all__ = ["FORMATS", "ParsedItem", "detect_format", "iter_records", "open_items", "read_items"]


@dataclass(frozen=True)
class ParsedItem:
    """One valid input record: its prompt (for a chat item, a plain-text view of its
    conversation), its validated per-item param overrides (only the keys the item set,
    JSON-ready; None when it set none) and, for chat items, its messages. OpenAI lines
    also name their kind and model."""

    line: int
    custom_id: str | None
    prompt: str
    params: dict[str, Any] | None
    messages: list[Message] | None = None
    kind: str | None = None
    model: str | None = None


def detect_format(path_or_name: str, explicit: str | None = None) -> str:
    """The input format: `explicit` when given, else from the file extension (".gz"
    ignored); stdin ("-") defaults to jsonl."""
    if explicit is not None:
        found = formats.by_name(explicit, "input")
        if found is None:
            raise InputFormatError(
                f"unknown input format {explicit!r}; allowed formats: {', '.join(FORMATS)}"
            )
        return found.name
    if path_or_name == "-":
        return "jsonl"
    suffixes = [s.lower() for s in Path(path_or_name).suffixes]
    if len(suffixes) >= 2 and suffixes[-1] == formats.GZIP_SUFFIX:
        inner = formats.by_extension(suffixes[-2], "input")
        if inner is not None and not inner.streams:
            raise InputFormatError(
                f"{path_or_name}: gzipped Parquet is not supported; Parquet compresses "
                "internally, so pass the .parquet file itself"
            )
    detected = formats.by_path(path_or_name, "input")
    if detected is None:
        raise InputFormatError(
            f"cannot tell the input format of {path_or_name!r} from its extension; "
            f"name it .jsonl, .csv or .parquet, or give the format ({', '.join(FORMATS)})"
        )
    return detected.name


def read_items(
    source: Source, spec: JobInputSpec, *, fmt: str | None = None
) -> Iterator[ParsedItem | LineProblem]:
    """Stream the job's items, validated and rendered; a bad record is yielded as a
    LineProblem instead of raised, so the caller can report every problem at once.

    The spec and the file's existence are checked before this returns (SpecError,
    InputFormatError).
    """
    return open_items(source, spec, fmt=fmt)[1]


def open_items(
    source: Source, spec: JobInputSpec, *, fmt: str | None = None
) -> tuple[str, Iterator[ParsedItem | LineProblem]]:
    """`read_items`, and the format read: "openai" when asked for, or when JSON Lines
    turn out to be OpenAI batch lines (their first record has custom_id, method, url and
    body)."""
    validate_spec(spec)
    resolved = detect_format(detection_name(source), fmt)
    records = iter_records(source, "jsonl" if resolved == "openai" else resolved, spec.limits)
    if resolved == "jsonl":
        records, resolved = _sniff(records)
    if resolved == "openai":
        if spec.template is not None:
            raise SpecError(
                "a template does not apply to OpenAI batch lines: each line's body is its "
                "request (remove --template)"
            )
        parse = _parse_openai
    else:
        tabular = resolved != "jsonl"
        parse = functools.partial(_parse_item, tabular=tabular)
    items = (
        record if isinstance(record, LineProblem) else parse(line, record, spec)
        for line, record in records
    )
    return resolved, items


def _sniff(records: Records) -> tuple[Records, str]:
    """Look at the first record to tell OpenAI batch lines from plain JSON Lines."""
    first = next(records, None)
    if first is None:
        return iter(()), "jsonl"
    fmt = "openai" if isinstance(first[1], dict) and is_openai_line(first[1]) else "jsonl"
    return itertools.chain([first], records), fmt


# -- records to items --------------------------------------------------------------------


def _parse_item(
    line: int, record: Record, spec: JobInputSpec, *, tabular: bool
) -> ParsedItem | LineProblem:
    """Validate one record; collect every problem in it, so one fix round is enough."""
    problems: list[str] = []
    custom_id = params = None
    prompt = ""
    messages = None
    try:
        custom_id = record_custom_id(record.get("custom_id"))
    except RecordError as exc:
        problems.append(str(exc))
    try:
        # CSV (and Parquet string columns) can only carry params as JSON text.
        params = record_params(
            record.get("params"), spec.base_params, json_text=tabular, limits=spec.limits
        )
    except RecordError as exc:
        problems.append(str(exc))
    try:
        if spec.kind == "chat":
            value = record.get("messages")
            if tabular and isinstance(value, str):
                value = json_cell("messages", value, spec.limits)
            messages = record_messages(value, system=spec.system)
            prompt = flatten(messages)
        else:
            prompt = render_prompt(spec, record)
            if spec.chat:
                messages = as_conversation(prompt, spec.system)
        if len(prompt) > spec.limits.max_prompt_chars:
            raise RecordError(prompt_too_large(len(prompt), spec.limits))
    except RecordError as exc:
        problems.append(str(exc))
    if problems:
        return LineProblem(line, "; ".join(problems), custom_id)
    return ParsedItem(line, custom_id, prompt, params, messages)


def _parse_openai(line: int, record: Record, spec: JobInputSpec) -> ParsedItem | LineProblem:
    """One OpenAI batch line as an item of its kind and model."""
    custom_id = None
    try:
        custom_id = record_custom_id(record.get("custom_id"), required=True)
        if custom_id is None:
            raise RecordError("custom_id is missing; every OpenAI batch line needs one")
        req = parse_request(record, system=spec.system)
        if len(req.prompt) > spec.limits.max_prompt_chars:
            raise RecordError(prompt_too_large(len(req.prompt), spec.limits))
        try:
            params = record_params(req.params or None, spec.base_params)
        except RecordError as exc:
            raise RecordError(in_body_terms(str(exc))) from None
    except RecordError as exc:
        return LineProblem(line, str(exc), custom_id)
    return ParsedItem(line, custom_id, req.prompt, params, req.messages, req.kind, req.model)
