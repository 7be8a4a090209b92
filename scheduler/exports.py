"""Writing a job's results to JSONL, CSV or Parquet, streamed in input order.

Works on a running job (what is done so far; with `include_pending`, the rest as
`pending` lines). Memory stays flat: rows come from SQL in pages and are written as
they arrive (Parquet in row groups). Every format is a view of `ResultLine`.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from genqueue import formats
from genqueue.resultline import FLAT_COLUMNS, ResultLine
from genqueue.scheduler.errors import ExportError
from genqueue.storage.db import Store
from genqueue.storage.results import iter_results

#: The result formats, by name (see genqueue/formats.py).
EXPORT_FORMATS = formats.names("output")
#: Rows per Parquet row group: bounds the export's memory.
PARQUET_GROUP_ROWS = 50_000


def export_format(path: str, explicit: str | None = None) -> str:
    """The format results are written in: `explicit`, else from the path's extension
    (stdout, "-", is JSONL)."""
    if explicit:
        found = formats.by_name(explicit, "output")
        if found is None:
            raise ExportError(f"format: {explicit!r} is not one of {', '.join(EXPORT_FORMATS)}")
        return found.name
    if path == "-":
        return "jsonl"
    detected = formats.by_extension(Path(path).suffix, "output")
    if detected is None:
        raise ExportError(
            f"cannot tell the format of {path!r} from its extension; "
            "use .jsonl, .csv or .parquet (or pass --format)"
        )
    return detected.name


def _write_jsonl(lines: Iterator[ResultLine], out: IO[str]) -> int:
    n = 0
    for line in lines:
        out.write(line.to_json())
        out.write("\n")
        n += 1
    return n


def _write_csv(lines: Iterator[ResultLine], out: IO[str]) -> int:
    writer = csv.DictWriter(out, fieldnames=[name for name, _ in FLAT_COLUMNS])
    writer.writeheader()
    n = 0
    for line in lines:
        row = line.flat()
        if row["outputs"] is not None:
            row["outputs"] = json.dumps(row["outputs"], ensure_ascii=False)
        writer.writerow(row)
        n += 1
    return n


def parquet_schema() -> Any:
    """The Parquet schema of result rows, from FLAT_COLUMNS."""
    import pyarrow as pa

    types = {"string": pa.string(), "int": pa.int64(), "bool": pa.bool_()}
    return pa.schema(
        [
            (name, pa.list_(pa.string()) if kind == "list" else types[kind])
            for name, kind in FLAT_COLUMNS
        ]
    )


def _write_parquet(lines: Iterator[ResultLine], path: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        buf: list[dict[str, Any]] = []
        for line in lines:
            buf.append(line.flat())
            if len(buf) >= PARQUET_GROUP_ROWS:
                writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                n += len(buf)
                buf.clear()
        if buf or n == 0:
            writer.write_table(pa.Table.from_pylist(buf, schema=schema))
            n += len(buf)
    return n


def export_results(
    store: Store,
    job_id: str,
    path: str,
    *,
    fmt: str | None = None,
    include_pending: bool = False,
) -> int:
    """Write the job's results to `path` ('-' = stdout, JSONL/CSV only); returns the
    number of lines written. Writes to a temporary file first, so a reader never sees a
    half-written export."""
    fmt = export_format(path, fmt)
    rows = iter_results(store, job_id, include_pending=include_pending)
    if path == "-":
        found = formats.by_name(fmt, "output")
        if found is not None and not found.streams:
            raise ExportError(f"{fmt} cannot be written to stdout; give a file path")
        return (_write_jsonl if fmt == "jsonl" else _write_csv)(rows, sys.stdout)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        if fmt == "parquet":
            n = _write_parquet(rows, str(tmp))
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as out:
                n = (_write_jsonl if fmt == "jsonl" else _write_csv)(rows, out)
        os.replace(tmp, target)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return n
