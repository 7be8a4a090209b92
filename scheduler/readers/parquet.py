"""Parquet: rows read one bounded batch at a time (pyarrow is imported only here)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any

from genqueue.scheduler.errors import InputFormatError
from genqueue.scheduler.readers.source import Record, Records, Source, open_binary, source_name

#: Rows per Parquet batch: bounds memory while keeping pyarrow's per-batch cost small.
PARQUET_BATCH_ROWS = 1024


def parquet_records(source: Source) -> Records:
    # Imported here: pyarrow.parquet is heavy and only Parquet input needs it.
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = source_name(source)
    with contextlib.ExitStack() as stack:
        target: Any = source
        if not isinstance(source, str | os.PathLike) or os.fspath(source) == "-":
            stream = stack.enter_context(open_binary(source))
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
