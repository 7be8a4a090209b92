"""Writing a job's results to JSONL, CSV or Parquet, streamed in input order.

Works on a running job (what is done so far; with `include_pending`, the rest as
`pending` lines). Memory stays flat: rows come from SQL in pages and are written as
they arrive (Parquet in row groups). Every format is a view of `ResultLine`.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from genqueue import formats
from genqueue.resultline import FLAT_COLUMNS, ResultLine
from genqueue.scheduler.errors import ExportError
from genqueue.scheduler.openai_format import Origin, is_error_line, output_line
from genqueue.scheduler.targets import EXPORT_FORMATS, check_targets, export_format
from genqueue.storage import batches
from genqueue.storage.db import Store
from genqueue.storage.loading import BATCH_PREFIX
from genqueue.storage.models import Job
from genqueue.storage.results import StoredResult, iter_results, iter_stored
from genqueue.storage.status import view_job

#: Rows per Parquet row group: bounds the export's memory.
PARQUET_GROUP_ROWS = 50_000


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


def write_parquet(lines: Iterator[ResultLine], path: str) -> int:
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


def job_rows(store: Store, job_or_batch: str) -> list[Job]:
    """The jobs of an id: the job itself, or a batch's jobs."""
    if job_or_batch.startswith(BATCH_PREFIX):
        return batches.batch_jobs(store, job_or_batch)
    return [view_job(store, job_or_batch).job]


def iter_lines(
    store: Store, job_or_batch: str, *, include_pending: bool = False
) -> Iterator[ResultLine]:
    """Result lines of a job or a batch, in input order (a batch's jobs merged)."""
    streams = [
        iter_results(store, job.id, include_pending=include_pending)
        for job in job_rows(store, job_or_batch)
    ]
    return heapq.merge(*streams, key=lambda line: line.index)


def iter_openai(store: Store, job_or_batch: str) -> Iterator[dict[str, Any]]:
    """OpenAI batch output (and error) lines of a job or a batch, in input order; items
    without a result yet have none."""
    streams = [_tagged(store, job) for job in job_rows(store, job_or_batch)]
    for _, stored, origin in heapq.merge(*streams, key=lambda t: t[0]):
        yield output_line(
            stored.line,
            origin,
            created=stored.created_at,
            finish_reasons=stored.finish_reasons,
            logprobs=stored.logprobs,
        )


def _tagged(store: Store, job: Job) -> Iterator[tuple[int, StoredResult, Origin]]:
    """A job's stored results, each with its index and the job's origin."""
    origin = Origin(job.id, job.kind, str((job.options or {}).get("model_name") or job.model))
    for stored in iter_stored(store, job.id):
        yield stored.line.index, stored, origin


def _write_openai(lines: Iterator[dict[str, Any]], out: IO[str], errors: IO[str] | None) -> int:
    n = 0
    for line in lines:
        target = errors if errors is not None and is_error_line(line) else out
        target.write(json.dumps(line, ensure_ascii=False))
        target.write("\n")
        n += 1
    return n


def export_results(
    store: Store,
    job_id: str,
    path: str,
    *,
    fmt: str | None = None,
    include_pending: bool = False,
    errors_path: str | None = None,
) -> int:
    """Write the results of a job (or a batch) to `path` ('-' = stdout, not Parquet);
    returns the number of lines written. With format "openai" and `errors_path`, the
    lines of failed, cancelled and expired items go there instead (OpenAI's error file).
    Writes to temporary files first, so a reader never sees a half-written export."""
    fmt = export_format(path, fmt)
    if errors_path is not None and fmt != "openai":
        raise ExportError("an error file (--errors) goes with --format openai")
    if path == "-":
        found = formats.by_name(fmt, "output")
        if found is not None and not found.streams:
            raise ExportError(f"{fmt} cannot be written to stdout; give a file path")
    check_targets(path, errors_path, what="output", errors_what="the error file")
    job_rows(store, job_id)  # an unknown id fails before any file is touched
    with contextlib.ExitStack() as files:
        out = _open_atomic(files, path)
        errors = _open_atomic(files, errors_path) if errors_path else None
        if fmt == "openai":
            return _write_openai(iter_openai(store, job_id), out, errors)
        rows = iter_lines(store, job_id, include_pending=include_pending)
        if fmt == "parquet":
            out.close()
            return write_parquet(rows, out.name)
        return (_write_jsonl if fmt == "jsonl" else _write_csv)(rows, out)


def _open_atomic(files: contextlib.ExitStack, path: str) -> IO[str]:
    """A text file that appears at `path` only once complete (stdout for '-')."""
    if path == "-":
        return sys.stdout
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        out = open(tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc}") from exc

    def finish(exc_type: object, exc: object, tb: object) -> None:
        out.close()
        try:
            if exc_type is None:
                os.replace(tmp, target)
        except OSError as err:
            raise ExportError(f"cannot write {path}: {err}") from err
        finally:
            tmp.unlink(missing_ok=True)

    files.push(finish)
    return out


#: Lines per chunk of a streamed export (`iter_text`).
STREAM_LINES = 500


def iter_text(
    store: Store,
    job_id: str,
    fmt: str,
    *,
    statuses: frozenset[str] | None = None,
    include_pending: bool = False,
) -> Iterator[str]:
    """A job's (or batch's) results as text chunks in a streaming format (jsonl, csv,
    openai), only the lines whose status is in `statuses` when given: what an HTTP
    response streams. Raises for an unknown id or format before the first chunk."""
    found = formats.by_name(fmt, "output")
    if found is None or not found.streams:
        streaming = [f for f in EXPORT_FORMATS if (x := formats.by_name(f, "output")) and x.streams]
        raise ExportError(f"format: {fmt!r} cannot be streamed; use {', '.join(streaming)}")
    job_rows(store, job_id)  # an unknown id fails before the first chunk
    return _chunks(store, job_id, found.name, statuses, include_pending)


def _chunks(
    store: Store,
    job_id: str,
    fmt: str,
    statuses: frozenset[str] | None,
    include_pending: bool,
) -> Iterator[str]:
    buf = io.StringIO()
    n = 0
    if fmt == "openai":
        for line in iter_openai(store, job_id):
            if statuses is not None and _openai_status(line) not in statuses:
                continue
            buf.write(json.dumps(line, ensure_ascii=False) + "\n")
            n += 1
            if n % STREAM_LINES == 0:
                yield _drain(buf)
        yield _drain(buf)
        return
    writer = csv.DictWriter(buf, fieldnames=[name for name, _ in FLAT_COLUMNS])
    if fmt == "csv":
        writer.writeheader()
    for result in iter_lines(store, job_id, include_pending=include_pending):
        if statuses is not None and result.status not in statuses:
            continue
        if fmt == "csv":
            row = result.flat()
            if row["outputs"] is not None:
                row["outputs"] = json.dumps(row["outputs"], ensure_ascii=False)
            writer.writerow(row)
        else:
            buf.write(result.to_json() + "\n")
        n += 1
        if n % STREAM_LINES == 0:
            yield _drain(buf)
    yield _drain(buf)


def _drain(buf: io.StringIO) -> str:
    text = buf.getvalue()
    buf.seek(0)
    buf.truncate()
    return text


def iter_openai_file(store: Store, job_or_batch: str, *, errors: bool) -> Iterator[bytes]:
    """OpenAI's output file (errors False: the lines that succeeded) or error file (True:
    failed, cancelled and expired lines) of a batch, as UTF-8 chunks in input order."""
    buf = io.StringIO()
    n = 0
    for line in iter_openai(store, job_or_batch):
        if is_error_line(line) != errors:
            continue
        buf.write(json.dumps(line, ensure_ascii=False) + "\n")
        n += 1
        if n % STREAM_LINES == 0:
            yield _drain(buf).encode()
    tail = _drain(buf)
    if tail:
        yield tail.encode()


def _openai_status(line: dict[str, Any]) -> str:
    """The result status behind an OpenAI output line (for a `status=` filter)."""
    if line.get("response") is None:
        code = (line.get("error") or {}).get("code", "")
        return "expired" if code == "batch_expired" else "cancelled"
    return "succeeded" if line["response"].get("status_code") == 200 else "failed"
