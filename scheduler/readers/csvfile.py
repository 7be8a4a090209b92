"""CSV with a header row: one record per row, text decoded as UTF-8."""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Iterator
from typing import IO, Any

from genqueue.scheduler.errors import InputFormatError, LineProblem
from genqueue.scheduler.readers.checks import record_too_large, text_problem, too_many_values
from genqueue.scheduler.readers.source import InputTooLarge, Records
from genqueue.settings import InputLimits

# Bytes that are not UTF-8 arrive from the text layer as these (errors="surrogateescape").
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


class _RecordTooLarge(Exception):
    def __init__(self, size: int) -> None:
        self.size = size


class _RecordTooWide(Exception):
    def __init__(self, commas: int) -> None:
        self.commas = commas


class _BoundedLines:
    """Physical lines for the csv module, none read past `max_record_bytes`, and no
    record (which quoted newlines can spread over lines) longer than that in all."""

    def __init__(self, text: IO[str], limit: int, max_fields: int) -> None:
        self.text = text
        self.limit = limit
        self.max_fields = max_fields
        self.pending = 0  # bytes of the record being read so far
        self.commas = 0  # and its commas: fields, before the csv module makes them
        self.quotes = 0  # and its quote characters (odd inside a quoted field)
        self.ended = False  # the input ran out while the csv module asked for more

    def __iter__(self) -> Iterator[str]:
        while True:
            line = self.text.readline(self.limit + 1)
            if not line:
                self.ended = True
                return
            size = len(line)
            if size * 4 > self.limit:  # UTF-8 may take up to 4 bytes a character
                size = len(line.encode("utf-8", "surrogateescape"))
            self.pending += size
            self.quotes += line.count('"')
            if self.pending > self.limit:
                raise _RecordTooLarge(self.pending)
            if self.pending > self.max_fields:  # only then can it hold that many fields
                self.commas += line.count(",")
                if self.commas >= self.max_fields:
                    raise _RecordTooWide(self.commas)
            yield line


def csv_records(stream: IO[bytes], name: str, limits: InputLimits) -> Records:
    # csv.field_size_limit is process-wide and 128 KiB by default, too small for a long
    # document. It is only ever raised, past any record this reader lets through
    # (_BoundedLines bounds memory), and each cell's length is checked like any field's.
    csv.field_size_limit(max(csv.field_size_limit(), limits.max_record_bytes + 1))
    # surrogateescape keeps the text layer in step past bad bytes, so they become a
    # problem for their own row rather than the end of the file.
    text = io.TextIOWrapper(
        stream,
        encoding="utf-8-sig",
        errors="surrogateescape",
        newline="",
    )
    try:
        lines = _BoundedLines(text, limits.max_record_bytes, limits.max_record_values)
        reader = csv.reader(iter(lines))
        try:
            header = _csv_header(reader, name)
        except _RecordTooLarge:
            too_large = record_too_large(limits.max_record_bytes, limits, what="row", more=True)
            raise InputFormatError(f"{name}: line 1: the header {too_large}") from None
        end = reader.line_num
        while True:
            lines.pending = lines.commas = lines.quotes = 0
            try:
                row = next(reader)
            except StopIteration:
                return
            except _RecordTooLarge:
                # The csv module cannot resume inside a record: reading stops here.
                problem = record_too_large(
                    limits.max_record_bytes, limits, what="the CSV record", more=True
                )
                yield end + 1, LineProblem(end + 1, problem + "; reading stopped here", fatal=True)
                return
            except InputTooLarge as exc:
                yield end + 1, LineProblem(end + 1, str(exc), fatal=True)
                return
            except _RecordTooWide as exc:
                problem = too_many_values(exc.commas, limits, what="fields")
                yield end + 1, LineProblem(end + 1, problem + "; reading stopped here", fatal=True)
                return
            except csv.Error as exc:
                yield end + 1, LineProblem(end + 1, _csv_error(exc, limits), fatal=True)
                return
            start, end = end + 1, reader.line_num
            if lines.ended and lines.quotes % 2:  # the input ended inside a quoted field
                yield (
                    start,
                    LineProblem(
                        start,
                        f"a quoted field opened on line {start} is never closed: the input ends "
                        'inside it; add the closing quote (")',
                    ),
                )
                return
            if all(not cell.strip() for cell in row):
                continue  # blank lines and all-empty rows (spreadsheets export them)
            problem = _csv_row_problem(row, header, start, end, limits)
            if problem is not None:
                yield start, LineProblem(start, problem)
                continue
            yield start, dict(zip(header, row, strict=True))
    finally:
        # Detach so that dropping the wrapper does not close a stream the caller owns.
        with contextlib.suppress(ValueError):
            text.detach()


def _csv_header(reader: Any, name: str) -> list[str]:
    try:
        row: list[str] = next(reader)
    except StopIteration:
        raise InputFormatError(f"{name} is empty; a CSV input needs a header row") from None
    except csv.Error as exc:
        raise InputFormatError(f"{name}: line 1: unreadable CSV header: {exc}") from exc
    header = [cell.strip() for cell in row]
    if any(_ESCAPED_BYTE.search(cell) for cell in header):
        raise InputFormatError(f"{name}: the header row is not valid UTF-8; save the file as UTF-8")
    for index, cell in enumerate(header, start=1):
        if not cell:
            raise InputFormatError(
                f"{name}: column {index} of the header row has no name; "
                "every column needs a name (line 1 must be the header)"
            )
    duplicates = sorted({cell for cell in header if header.count(cell) > 1})
    if duplicates:
        raise InputFormatError(
            f"{name}: duplicate column name(s) in the header: {', '.join(duplicates)}"
        )
    return header


def _csv_error(exc: csv.Error, limits: InputLimits) -> str:
    if "field limit" in str(exc):
        return (
            f"a field is longer than {limits.max_field_chars:,} characters "
            "(GENQUEUE_MAX_FIELD_CHARS); reading stopped here"
        )
    return f"unreadable CSV: {exc}; reading stopped here"


def _csv_row_problem(
    row: list[str], header: list[str], start: int, end: int, limits: InputLimits
) -> str | None:
    for column, cell in zip(header, row, strict=False):
        bad = _ESCAPED_BYTE.search(cell)
        if bad is not None:
            byte = ord(bad.group()) - 0xDC00
            return (
                f"not valid UTF-8 (byte 0x{byte:02x} in column {column!r}); save the file as UTF-8"
            )
        # Decoded UTF-8 holds no other surrogates; NUL characters and length remain.
        problem = text_problem(cell, column, limits)
        if problem is not None:
            return problem
    if len(row) != len(header):
        spans = (
            f" (the row runs from line {start} to {end}: an unclosed quote?)" if end > start else ""
        )
        return (
            f"row has {len(row)} field(s) but the header has {len(header)}{spans}; "
            "quote fields that contain commas"
        )
    return None
