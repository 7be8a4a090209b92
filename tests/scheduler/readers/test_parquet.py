"""The Parquet reader: nulls, row numbers across batches, types, streams."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genqueue.scheduler.errors import InputFormatError
from genqueue.scheduler.inputs import ParsedItem
from genqueue.scheduler.kinds import JobInputSpec
from genqueue.scheduler.readers.parquet import PARQUET_BATCH_ROWS
from tests.scheduler.inputs_helpers import (
    good,
    items,
    jsonl,
    problems,
    write,
)


def test_parquet_nulls_row_numbers_and_types(tmp_path: Path) -> None:
    table = pa.table(
        {
            "custom_id": [1, 2, None, 4],
            "question": ["Q1", "Q2", None, "Q4"],
            "context": ["C1", None, "C3", ""],
            "params": ['{"temperature": 0.5}', None, None, ""],
        }
    )
    path = tmp_path / "in.parquet"
    pq.write_table(table, path)
    result = items(path, JobInputSpec(kind="qa"))
    assert good(result) == [
        ParsedItem(1, "1", "question: Q1 context: C1", {"temperature": 0.5}),
        ParsedItem(2, "2", "question: Q2", None),
        ParsedItem(4, "4", "question: Q4", None),
    ]
    assert problems(result) == {
        3: "missing required field 'question' for kind 'qa'; the record has: context"
    }


def test_parquet_row_numbers_across_batches_and_struct_params(tmp_path: Path) -> None:
    n = PARQUET_BATCH_ROWS * 2 + 5
    params = [{"temperature": 0.5, "top_p": None}] * n
    params[-1] = {"temperature": -1.0, "top_p": None}
    table = pa.table({"prompt": [f"p{i}" for i in range(n)], "params": params})
    path = tmp_path / "in.pq"
    pq.write_table(table, path, row_group_size=1000)
    result = items(path)
    assert [r.line for r in good(result)] == list(range(1, n))
    assert good(result)[-1].prompt == f"p{n - 2}" and good(result)[0].params == {"temperature": 0.5}
    assert list(problems(result)) == [n]


def test_parquet_wrong_column_type(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": [1.5], "blob": [b"\x00"]}), path)
    assert problems(items(path)) == {1: "field 'prompt' must be a string, got number (1.5)"}


def test_parquet_from_seekable_and_unseekable_streams(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["streamed"]}), buffer)
    data = buffer.getvalue()

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            chunk = self.inner.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    for stream in (io.BytesIO(data), io.BufferedReader(Pipe())):
        assert [r.prompt for r in good(items(stream, fmt="parquet"))] == ["streamed"]


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = write(tmp_path, "in.parquet", jsonl({"prompt": "not parquet"}))
    with pytest.raises(InputFormatError, match="is not a readable Parquet file"):
        items(path)


def test_parquet_text_that_is_not_utf8_is_a_problem_of_its_row(tmp_path: Path) -> None:
    """Parquet does not validate string columns (found by the fuzz test): such a row is a
    problem with its row number, and the other rows are read."""
    text = pa.array([b"fine", b"\xfbbad", b"also fine"], type=pa.binary()).view(pa.string())
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": text}), path)
    result = items(path)
    assert [r.prompt for r in good(result)] == ["fine", "also fine"]
    assert problems(result) == {
        2: "a string column holds bytes that are not valid UTF-8; write the text as UTF-8 "
        "(or the column as binary)"
    }


def test_parquet_column_names_that_are_not_utf8(tmp_path: Path) -> None:
    """Found by the fuzz test: pyarrow fails decoding such a schema; the file is refused
    as unreadable, with its name."""
    sink = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["a"]}), sink)
    path = write(tmp_path, "names.parquet", sink.getvalue().replace(b"prompt", b"pr\xeempt"))
    with pytest.raises(InputFormatError, match=r"names\.parquet is not a readable Parquet file"):
        items(path)
