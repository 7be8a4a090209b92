"""JSON Lines: one object per line, each line decoded and parsed on its own.

A line is read into memory only up to `max_record_bytes`; a longer one is skipped in
small chunks (its size is still reported), so memory never depends on the line.
"""

from __future__ import annotations

import codecs
import json
from typing import IO, Any

from genqueue.errors import type_name
from genqueue.scheduler.errors import InputFormatError, LineProblem
from genqueue.scheduler.readers.checks import (
    load_json,
    record_problem,
    record_too_large,
    too_many_values,
)
from genqueue.scheduler.readers.source import READ_CHUNK, InputTooLarge, Records
from genqueue.settings import InputLimits


def jsonl_records(stream: IO[bytes], name: str, limits: InputLimits) -> Records:
    # Binary lines, decoded one by one: a bad byte spoils only its own line, and only
    # "\n" ends a line (U+2028 inside a string does not).
    line = 0
    while True:
        try:
            raw = stream.readline(limits.max_record_bytes + 1)
            if len(raw) > limits.max_record_bytes and not raw.endswith(b"\n"):
                size = len(raw) + _skip_line(stream)
                yield line + 1, LineProblem(line + 1, record_too_large(size, limits))
                line += 1
                continue
        except InputTooLarge as exc:
            yield line + 1, LineProblem(line + 1, str(exc), fatal=True)
            return
        if not raw:
            return
        line += 1
        if line == 1:
            if raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise InputFormatError(f"{name} is UTF-16 text; save it as UTF-8")
        last = not raw.endswith(b"\n")  # only the final line can lack its newline
        body = raw.rstrip(b"\r\n")
        del raw
        if not body.strip():
            continue
        yield line, _parse_line(body, line, last, limits)


def _skip_line(stream: IO[bytes]) -> int:
    """Read past the rest of an over-long line, a chunk at a time; returns its bytes."""
    skipped = 0
    while True:
        chunk = stream.readline(READ_CHUNK)
        skipped += len(chunk)
        if not chunk:
            return skipped
        if chunk.endswith(b"\n"):
            return skipped - 1  # the size of the line, without its newline


def _parse_line(body: bytes, line: int, last: bool, limits: InputLimits) -> Any:
    if len(body) > limits.max_record_values:  # only then can it hold that many values
        # Every value but the first follows a comma; ':' and brackets add none. Commas
        # inside strings count too, so this over-counts prose, never under-counts.
        separators = body.count(b",")
        if separators >= limits.max_record_values:
            return LineProblem(line, too_many_values(separators, limits))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = len(body[: exc.start].decode("utf-8", errors="replace")) + 1
        return LineProblem(
            line,
            f"not valid UTF-8 (byte 0x{body[exc.start]:02x} at column {column}); "
            "save the file as UTF-8",
        )
    # Only a \\u escape can put a NUL or a lone surrogate in a JSON string (raw control
    # characters are invalid JSON), so lines without one skip those checks.
    escapes = b"\\u" in body
    # A line that cannot break a record limit needs no walk: no text in it is longer
    # than the field limit, no escape can hide a NUL, and it nests less than the limit.
    simple = (
        len(body) <= limits.max_field_chars
        and not escapes
        and body.count(b"{") + body.count(b"[") < limits.max_nesting_depth
    )
    del body
    try:
        value = load_json(text, limits)
    except json.JSONDecodeError as exc:
        return LineProblem(line, _json_problem(text, exc, last))
    except ValueError as exc:
        return LineProblem(line, f"invalid JSON: {exc}")
    if not isinstance(value, dict):
        return LineProblem(line, f"expected a JSON object on each line, got {type_name(value)}")
    if not simple:
        problem = record_problem(value, limits, text_checks=escapes)
        if problem is not None:
            return LineProblem(line, problem)
    return value


def _json_problem(text: str, exc: json.JSONDecodeError, last: bool) -> str:
    # json's messages sometimes end in "at" ("Unterminated string starting at").
    at = "" if exc.msg.endswith(" at") else " at"
    where = f"{exc.msg}{at} column {exc.colno}"
    if last:
        return (
            "truncated or invalid JSON (the last line has no newline — was the file cut "
            f"off?): {where}"
        )
    stripped = text.strip()
    if stripped in ("{", "[") or stripped.startswith("["):
        return (
            f"invalid JSON: {where} (JSON Lines needs one complete object per line; "
            "pretty-printed JSON or a JSON array is not supported)"
        )
    if not stripped.startswith(("{", '"')) and "," in stripped:
        return f"invalid JSON: {where} (is this CSV? pass --format csv, or name the file .csv)"
    return f"invalid JSON: {where}"
