"""CSV with a header row: one record per row, text decoded as UTF-8."""

from __future__ import annotations

import contextlib
import csv
import io
import re
from typing import IO, Any

from genqueue.scheduler.errors import InputFormatError, LineProblem
from genqueue.scheduler.readers.source import Records

# Python's csv module refuses fields over 128 KiB by default; a long document is one field.
_CSV_FIELD_LIMIT = 2**31 - 1
# Bytes that are not UTF-8 arrive from the text layer as these (errors="surrogateescape").
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def csv_records(stream: IO[bytes], name: str) -> Records:
    # csv.field_size_limit is process-wide; raising it only ever accepts more input.
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    # surrogateescape keeps the text layer in step past bad bytes, so they become a
    # problem for their own row rather than the end of the file.
    text = io.TextIOWrapper(
        stream,
        encoding="utf-8-sig",
        errors="surrogateescape",
        newline="",
    )
    try:
        reader = csv.reader(text)
        header = _csv_header(reader, name)
        end = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputFormatError(f"{name}: line {end + 1}: unreadable CSV: {exc}") from exc
            start, end = end + 1, reader.line_num
            if all(not cell.strip() for cell in row):
                continue  # blank lines and all-empty rows (spreadsheets export them)
            problem = _csv_row_problem(row, header, start, end)
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


def _csv_row_problem(row: list[str], header: list[str], start: int, end: int) -> str | None:
    for column, cell in zip(header, row, strict=False):
        bad = _ESCAPED_BYTE.search(cell)
        if bad is not None:
            byte = ord(bad.group()) - 0xDC00
            return (
                f"not valid UTF-8 (byte 0x{byte:02x} in column {column!r}); save the file as UTF-8"
            )
    if len(row) != len(header):
        spans = (
            f" (the row runs from line {start} to {end}: an unclosed quote?)" if end > start else ""
        )
        return (
            f"row has {len(row)} field(s) but the header has {len(header)}{spans}; "
            "quote fields that contain commas"
        )
    return None
