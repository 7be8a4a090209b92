"""Job input as items: the format of a source, and each record validated and rendered
into a prompt (the byte-level readers are in readers/)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genqueue import formats
from genqueue.scheduler.errors import InputFormatError, LineProblem, RecordError
from genqueue.scheduler.kinds import (
    JobInputSpec,
    record_custom_id,
    record_params,
    render_prompt,
    validate_spec,
)
from genqueue.scheduler.readers import FORMATS, Record, Source, detection_name, iter_records

__all__ = ["FORMATS", "ParsedItem", "detect_format", "iter_records", "read_items"]


@dataclass(frozen=True)
class ParsedItem:
    """One valid input record: its prompt and its validated per-item param overrides
    (only the keys the item set, JSON-ready; None when it set none)."""

    line: int
    custom_id: str | None
    prompt: str
    params: dict[str, Any] | None


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
    validate_spec(spec)
    resolved = detect_format(detection_name(source), fmt)
    records = iter_records(source, resolved)
    tabular = resolved != "jsonl"
    return (
        record if isinstance(record, LineProblem) else _parse_item(line, record, spec, tabular)
        for line, record in records
    )


# -- records to items --------------------------------------------------------------------


def _parse_item(
    line: int, record: Record, spec: JobInputSpec, tabular: bool
) -> ParsedItem | LineProblem:
    """Validate one record; collect every problem in it, so one fix round is enough."""
    problems: list[str] = []
    custom_id = params = None
    prompt = ""
    try:
        custom_id = record_custom_id(record.get("custom_id"))
    except RecordError as exc:
        problems.append(str(exc))
    try:
        # CSV (and Parquet string columns) can only carry params as JSON text.
        params = record_params(record.get("params"), spec.base_params, json_text=tabular)
    except RecordError as exc:
        problems.append(str(exc))
    try:
        prompt = render_prompt(spec, record)
    except RecordError as exc:
        problems.append(str(exc))
    if problems:
        return LineProblem(line, "; ".join(problems), custom_id)
    return ParsedItem(line=line, custom_id=custom_id, prompt=prompt, params=params)
