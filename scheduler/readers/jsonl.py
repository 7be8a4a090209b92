"""JSON Lines: one object per line, each line decoded and parsed on its own."""

from __future__ import annotations

import codecs
import json
from typing import IO

from genqueue.scheduler.errors import InputFormatError, LineProblem
from genqueue.scheduler.readers.source import Records


def jsonl_records(stream: IO[bytes], name: str) -> Records:
    # Binary lines, decoded one by one: a bad byte spoils only its own line, there is no
    # line-length limit, and only "\n" ends a line (U+2028 inside a string does not).
    line = 0
    for raw in stream:
        line += 1
        if line == 1:
            if raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise InputFormatError(f"{name} is UTF-16 text; save it as UTF-8")
        last = not raw.endswith(b"\n")  # only the final line can lack its newline
        body = raw.rstrip(b"\r\n")
        if not body.strip():
            continue
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            column = len(body[: exc.start].decode("utf-8", errors="replace")) + 1
            yield (
                line,
                LineProblem(
                    line,
                    f"not valid UTF-8 (byte 0x{body[exc.start]:02x} at column {column}); "
                    "save the file as UTF-8",
                ),
            )
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield line, LineProblem(line, _json_problem(text, exc, last))
            continue
        if not isinstance(value, dict):
            got = "array" if isinstance(value, list) else type(value).__name__
            yield line, LineProblem(line, f"expected a JSON object on each line, got {got}")
            continue
        yield line, value


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
    return f"invalid JSON: {where}"
