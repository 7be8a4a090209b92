"""Parquet: rows read one bounded batch at a time (pyarrow is imported only here)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any

from genqueue.scheduler.errors import InputFormatError, LineProblem
from genqueue.scheduler.readers.checks import record_problem, record_too_large
from genqueue.scheduler.readers.source import (
    READ_CHUNK,
    InputTooLarge,
    Record,
    Records,
    Source,
    open_binary,
    source_name,
)
from genqueue.settings import InputLimits

#: Rows per Parquet batch: bounds memory while keeping pyarrow's per-batch cost small.
PARQUET_BATCH_ROWS = 1024


def parquet_records(source: Source, limits: InputLimits) -> Records:
    # Imported here: pyarrow.parquet is heavy and only Parquet input needs it.
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = source_name(source)
    with contextlib.ExitStack() as stack:
        target: Any = source
        if not isinstance(source, str | os.PathLike) or os.fspath(source) == "-":
            stream = stack.enter_context(open_binary(source, limits.max_input_bytes))
            if not stream.seekable():
                # Parquet's footer is at the end: spool stdin to disk, not to memory.
                spool = stack.enter_context(tempfile.TemporaryFile())
                try:
                    shutil.copyfileobj(stream, spool, READ_CHUNK)
                except InputTooLarge as exc:
                    raise InputFormatError(f"{name}: {exc}") from None
                spool.seek(0)
                stream = spool
            target = stream
        elif os.path.getsize(source) > limits.max_input_bytes:
            raise InputFormatError(f"{name}: {InputTooLarge(limits.max_input_bytes)}")
        try:
            # Text columns stay dictionary-encoded while read: a value repeated in many
            # rows is held once, and row sizes are measured before any row is expanded.
            schema = pq.read_schema(target)
            if hasattr(target, "seek"):
                target.seek(0)
            text = [f.name for f in schema if _is_text(f.type)]
            parquet = pq.ParquetFile(target, read_dictionary=text)
            stack.callback(parquet.close)
            big = _big_row_group(parquet.metadata, limits)
        except (pa.ArrowException, OSError, ValueError) as exc:
            # UnicodeDecodeError (a ValueError): column names that are not UTF-8.
            raise InputFormatError(f"{name} is not a readable Parquet file: {exc}") from exc
        if big is not None:
            yield big[0], LineProblem(big[0], big[1], fatal=True)
            return
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                sizes = _row_sizes(batch)
                start = 0
                while start < batch.num_rows:
                    if sizes[start] > limits.max_record_bytes:  # never expanded
                        row += 1
                        problem = record_too_large(sizes[start], limits, what="the row")
                        yield row, LineProblem(row, problem)
                        start += 1
                        continue
                    # Expand rows a slice of at most one record's size at a time.
                    end, total = start, 0
                    while (
                        end < batch.num_rows
                        and sizes[end] <= limits.max_record_bytes
                        and (end == start or total + sizes[end] <= limits.max_record_bytes)
                    ):
                        total += sizes[end]
                        end += 1
                    for values in _rows(batch.slice(start, end - start)):
                        row += 1
                        if values is None:
                            yield row, LineProblem(row, _NOT_UTF8)
                            continue
                        record = _parquet_record(values)
                        problem = record_problem(record, limits)
                        yield row, record if problem is None else LineProblem(row, problem)
                    start = end
        except (pa.ArrowException, OSError) as exc:
            raise InputFormatError(
                f"{name}: cannot read Parquet data after row {row}: {exc}"
            ) from exc


#: Parquet does not check that string columns hold UTF-8; pyarrow fails converting them.
_NOT_UTF8 = (
    "a string column holds bytes that are not valid UTF-8; write the text as UTF-8 "
    "(or the column as binary)"
)


def _is_text(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def _row_sizes(batch: Any) -> list[int]:
    """Bytes of text and binary values per row, measured in Arrow (nothing expanded)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = pa.array([0] * batch.num_rows, pa.int64())
    for column in batch.columns:
        if pa.types.is_dictionary(column.type) and _is_text(column.type.value_type):
            lengths = pc.binary_length(column.dictionary).cast(pa.int64())
            sizes = pc.take(lengths, column.indices)
        elif _is_text(column.type):
            sizes = pc.binary_length(column).cast(pa.int64())
        else:
            continue
        total = pc.add(total, pc.fill_null(sizes, 0))
    return [int(v) for v in total.to_pylist()]


def _rows(batch: Any) -> list[dict[str, Any] | None]:
    """A batch's rows as dicts; a row whose text is not UTF-8 is None (found row by row
    only when the whole batch fails)."""
    try:
        rows: list[dict[str, Any] | None] = batch.to_pylist()
        return rows
    except UnicodeDecodeError:
        pass
    out: list[dict[str, Any] | None] = []
    for i in range(batch.num_rows):
        try:
            out.append(batch.slice(i, 1).to_pylist()[0])
        except UnicodeDecodeError:
            out.append(None)
    return out


def _big_row_group(metadata: Any, limits: InputLimits) -> tuple[int, str] | None:
    """The first row group too large to read at once (pyarrow loads a row group's
    columns whole), from the file's metadata: (its first row, the problem)."""
    first = 1
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        rows = group.num_rows
        size = group.total_byte_size
        if size > limits.max_row_group_bytes:
            return first, (
                f"row group {index + 1} (rows {first}-{first + rows - 1}) is {size:,} bytes "
                f"uncompressed; at most {limits.max_row_group_bytes:,} are allowed "
                "(GENQUEUE_MAX_ROW_GROUP_BYTES); write the file with smaller row groups "
                "(pyarrow: pq.write_table(..., row_group_size=N))"
            )
        if rows == 1 and size > limits.max_record_bytes:
            return first, f"row {first}: " + record_too_large(size, limits, what="the row")
        first += rows
    return None


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
