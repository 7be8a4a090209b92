"""Streaming readers for job input: JSON Lines, CSV and Parquet, from a path or a stream.

Records are read one at a time (Parquet: one bounded batch at a time), so memory does not
grow with the file, and each is held to the input limits (genqueue.settings.InputLimits)
while it is read. A bad record becomes a `LineProblem` for its line and reading goes
on; only input that cannot be read at all raises `InputFormatError`.
"""

from __future__ import annotations

import os
from pathlib import Path

from genqueue import formats
from genqueue.scheduler.errors import InputFormatError
from genqueue.scheduler.readers.csvfile import csv_records
from genqueue.scheduler.readers.jsonl import jsonl_records
from genqueue.scheduler.readers.parquet import parquet_records
from genqueue.scheduler.readers.source import (
    Record,
    Records,
    Source,
    check_path,
    detection_name,
    limit_records,
    with_stream,
)
from genqueue.settings import InputLimits

__all__ = ["Record", "Records", "Source", "detection_name", "iter_records"]

#: The input formats, by name (see genqueue/formats.py).
FORMATS = formats.names("input")


def iter_records(source: Source, fmt: str, limits: InputLimits | None = None) -> Records:
    """Stream `(line, record)` pairs, or `(line, LineProblem)` for a record that cannot be
    parsed. Lines are 1-based physical lines (Parquet: row numbers).

    A missing file or unknown format raises InputFormatError here; unreadable content
    raises it while iterating. Input past a limit (`limits`, the defaults when None)
    gives a problem; one that ends the reading is `fatal` and the last pair.
    """
    limits = limits or InputLimits()
    if fmt not in FORMATS:
        raise InputFormatError(f"unknown input format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if isinstance(source, str | os.PathLike) and os.fspath(source) != "-":
        check_path(Path(source))
    if fmt == "parquet":
        records = parquet_records(source, limits)
    elif fmt == "csv":
        records = with_stream(source, csv_records, limits)
    else:
        records = with_stream(source, jsonl_records, limits)
    return limit_records(records, limits)
