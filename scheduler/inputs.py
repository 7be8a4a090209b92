"""Streaming readers for job input: JSON Lines, CSV and Parquet, from a path or a stream.

Records are read one at a time (Parquet: one bounded batch at a time), so memory does not
grow with the file. A bad record becomes a `LineProblem` for its line and reading goes
on; only input that cannot be read at all raises `InputFormatError`.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import json
import os
import re
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from genqueue.scheduler.errors import InputFormatError, LineProblem
from genqueue.scheduler.kinds import (
    JobInputSpec,
    RecordError,
    record_custom_id,
    record_params,
    render_prompt,
    validate_spec,
)

FORMATS = ("jsonl", "csv", "parquet")

#: Rows per Parquet batch: bounds memory while keeping pyarrow's per-batch cost small.
PARQUET_BATCH_ROWS = 1024

_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_ALIASES = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}
_GZIP_MAGIC = b"\x1f\x8b"
# Python's csv module refuses fields over 128 KiB by default; a long document is one field.
_CSV_FIELD_LIMIT = 2**31 - 1
# Bytes that are not UTF-8 arrive from the text layer as these (errors="surrogateescape").
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")

Source = str | os.PathLike[str] | BinaryIO
Record = dict[str, Any]
_Parser = Callable[[IO[bytes], str], Iterator[tuple[int, Record | LineProblem]]]


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
        fmt = _ALIASES.get(explicit.strip().lower(), explicit.strip().lower())
        if fmt not in FORMATS:
            raise InputFormatError(
                f"unknown input format {explicit!r}; allowed formats: {', '.join(FORMATS)}"
            )
        return fmt
    if path_or_name == "-":
        return "jsonl"
    suffixes = [s.lower() for s in Path(path_or_name).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
        if suffixes and _EXTENSIONS.get(suffixes[-1]) == "parquet":
            raise InputFormatError(
                f"{path_or_name}: gzipped Parquet is not supported; Parquet compresses "
                "internally, so pass the .parquet file itself"
            )
    detected = _EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if detected is None:
        raise InputFormatError(
            f"cannot tell the input format of {path_or_name!r} from its extension; "
            f"name it .jsonl, .csv or .parquet, or give the format ({', '.join(FORMATS)})"
        )
    return detected


def iter_records(source: Source, fmt: str) -> Iterator[tuple[int, Record | LineProblem]]:
    """Stream `(line, record)` pairs, or `(line, LineProblem)` for a record that cannot be
    parsed. Lines are 1-based physical lines (Parquet: row numbers).

    A missing file or unknown format raises InputFormatError here; unreadable content
    raises it while iterating.
    """
    if fmt not in FORMATS:
        raise InputFormatError(f"unknown input format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if isinstance(source, str | os.PathLike) and os.fspath(source) != "-":
        _check_path(Path(source))
    if fmt == "parquet":
        return _parquet_records(source)
    if fmt == "csv":
        return _with_stream(source, _csv_records)
    return _with_stream(source, _jsonl_records)


def read_items(
    source: Source, spec: JobInputSpec, *, fmt: str | None = None
) -> Iterator[ParsedItem | LineProblem]:
    """Stream the job's items, validated and rendered; a bad record is yielded as a
    LineProblem instead of raised, so the caller can report every problem at once.

    The spec and the file's existence are checked before this returns (SpecError,
    InputFormatError).
    """
    validate_spec(spec)
    resolved = detect_format(_detection_name(source), fmt)
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


# -- sources -----------------------------------------------------------------------------


def _check_path(path: Path) -> None:
    if not path.exists():
        raise InputFormatError(f"input file not found: {path}")
    if path.is_dir():
        raise InputFormatError(f"{path} is a directory; give the input file inside it")
    if not os.access(path, os.R_OK):
        raise InputFormatError(f"cannot read {path}: permission denied")


def _source_name(source: Source) -> str:
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        return "<stdin>" if path == "-" else path
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<stream>"


def _detection_name(source: Source) -> str:
    """A stream's name only counts when it has a known extension (stdin's is "<stdin>")."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    name = getattr(source, "name", None)
    if isinstance(name, str) and Path(name).suffix.lower() in (*_EXTENSIONS, ".gz"):
        return name
    return "-"


@contextlib.contextmanager
def _open_binary(source: Source) -> Iterator[IO[bytes]]:
    """The source as a binary stream, gunzipped when it starts with gzip's magic bytes
    (paths, and streams that can peek such as stdin). Streams we did not open stay open."""
    with contextlib.ExitStack() as stack:
        stream: IO[bytes]
        if isinstance(source, str | os.PathLike):
            is_stdin = os.fspath(source) == "-"
            stream = sys.stdin.buffer if is_stdin else stack.enter_context(open(source, "rb"))
        elif isinstance(source, io.TextIOBase):
            # sys.stdin instead of sys.stdin.buffer: read the bytes underneath.
            buffer = getattr(source, "buffer", None)
            if buffer is None:
                raise InputFormatError("input stream must be binary (e.g. sys.stdin.buffer)")
            stream = buffer
        else:
            stream = source
        peek = getattr(stream, "peek", None)
        if callable(peek) and peek(2)[:2] == _GZIP_MAGIC:
            # GzipFile leaves the stream under it open when it closes.
            stream = cast(IO[bytes], stack.enter_context(gzip.GzipFile(fileobj=stream)))
        yield stream


def _with_stream(source: Source, parse: _Parser) -> Iterator[tuple[int, Record | LineProblem]]:
    """Open the source and run a parser over it; corrupt gzip data becomes an
    InputFormatError naming the file."""
    name = _source_name(source)
    with _open_binary(source) as stream:
        try:
            yield from parse(stream, name)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise InputFormatError(f"{name}: corrupt or truncated gzip data ({exc})") from exc


def _jsonl_records(stream: IO[bytes], name: str) -> Iterator[tuple[int, Record | LineProblem]]:
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


def _csv_records(stream: IO[bytes], name: str) -> Iterator[tuple[int, Record | LineProblem]]:
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


def _parquet_records(source: Source) -> Iterator[tuple[int, Record | LineProblem]]:
    # Imported here: pyarrow.parquet is heavy and only Parquet input needs it.
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = _source_name(source)
    with contextlib.ExitStack() as stack:
        target: Any = source
        if not isinstance(source, str | os.PathLike) or os.fspath(source) == "-":
            stream = stack.enter_context(_open_binary(source))
            if not stream.seekable():
                # Parquet's footer is at the end: spool stdin to disk, not to memory.
                spool = stack.enter_context(tempfile.TemporaryFile())
                shutil.copyfileobj(stream, spool)
                spool.seek(0)
                stream = spool
            target = stream
        try:
            parquet = pq.ParquetFile(target)
        except (pa.ArrowException, OSError) as exc:
            raise InputFormatError(f"{name} is not a readable Parquet file: {exc}") from exc
        stack.callback(parquet.close)
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for values in batch.to_pylist():
                    row += 1
                    yield row, _parquet_record(values)
        except (pa.ArrowException, OSError) as exc:
            raise InputFormatError(
                f"{name}: cannot read Parquet data after row {row}: {exc}"
            ) from exc


def _parquet_record(values: dict[str, Any]) -> Record:
    """Nulls are absent values; in a struct `params` column, unset members are nulls too."""
    record = {}
    for key, value in values.items():
        if value is None:
            continue
        if key == "params" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        record[key] = value
    return record
