"""Writing a job's results to JSONL, CSV or Parquet, streamed in input order.

Works on a running job (what is done so far; with `include_pending`, the rest as
`pending` lines). Memory stays flat: rows come from SQL in pages and are written as
they arrive (Parquet in row groups).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from genqueue.scheduler.errors import SubmissionError
from genqueue.storage.db import Store
from genqueue.storage.results import ResultRow, iter_results

EXPORT_FORMATS = ("jsonl", "csv", "parquet")
CSV_COLUMNS = (
    "custom_id",
    "index",
    "status",
    "output",
    "outputs",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "error_code",
    "error_message",
    "truncated",
)


class ExportError(SubmissionError):
    """Raised when results cannot be written (unknown format, unwritable path)."""


def export_format(path: str, explicit: str | None = None) -> str:
    if explicit:
        if explicit not in EXPORT_FORMATS:
            raise ExportError(f"format: {explicit!r} is not one of {', '.join(EXPORT_FORMATS)}")
        return explicit
    suffix = Path(path).suffix.lower().lstrip(".")
    if path == "-" or suffix in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if suffix in ("csv", "parquet"):
        return suffix
    if suffix == "pq":
        return "parquet"
    raise ExportError(
        f"cannot tell the format of {path!r} from its extension; "
        "use .jsonl, .csv or .parquet (or pass --format)"
    )


def _flat(row: ResultRow) -> dict[str, Any]:
    return {
        "custom_id": row.custom_id,
        "index": row.index,
        "status": row.status,
        "output": row.outputs[0] if row.outputs else row.output,
        "outputs": json.dumps(row.outputs, ensure_ascii=False) if row.outputs else None,
        "finish_reason": row.finish_reason,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "error_code": row.error_code,
        "error_message": row.error_message,
        "truncated": row.truncated,
    }


def _write_jsonl(rows: Iterator[ResultRow], out: IO[str]) -> int:
    n = 0
    for row in rows:
        out.write(json.dumps(row.to_record(), ensure_ascii=False))
        out.write("\n")
        n += 1
    return n


def _write_csv(rows: Iterator[ResultRow], out: IO[str]) -> int:
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    n = 0
    for row in rows:
        writer.writerow(_flat(row))
        n += 1
    return n


def _write_parquet(rows: Iterator[ResultRow], path: str, group: int = 50_000) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("custom_id", pa.string()),
            ("index", pa.int64()),
            ("status", pa.string()),
            ("output", pa.string()),
            ("outputs", pa.list_(pa.string())),
            ("finish_reason", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("error_code", pa.string()),
            ("error_message", pa.string()),
            ("truncated", pa.bool_()),
        ]
    )
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        buf: list[dict[str, Any]] = []
        for row in rows:
            rec = _flat(row)
            rec["outputs"] = row.outputs
            buf.append(rec)
            if len(buf) >= group:
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
        import sys

        if fmt == "parquet":
            raise ExportError("parquet cannot be written to stdout; give a file path")
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
