"""Input sources: missing files, stdin and streams, gzip."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from genqueue.scheduler.errors import InputFormatError
from genqueue.scheduler.inputs import iter_records, read_items
from tests.scheduler.inputs_helpers import (
    GENERATE,
    good,
    items,
    jsonl,
    write,
)


def test_missing_file_and_directory_fail_before_iteration(tmp_path: Path) -> None:
    with pytest.raises(InputFormatError, match="input file not found"):
        read_items(tmp_path / "nope.jsonl", GENERATE)  # no next(): raised eagerly
    with pytest.raises(InputFormatError, match="is a directory"):
        iter_records(tmp_path, "jsonl")


def test_jsonl_gzip_file(tmp_path: Path) -> None:
    path = write(tmp_path, "in.jsonl.gz", gzip.compress(jsonl({"prompt": "zipped"})))
    assert [r.prompt for r in good(items(path))] == ["zipped"]


def test_gzipped_stream_that_can_peek_is_unzipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "in.csv.gz", gzip.compress(b"prompt\nzipped csv\n"))
    with path.open("rb") as f:  # named .csv.gz: the format comes from the name
        assert [r.prompt for r in good(items(f))] == ["zipped csv"]
    stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(gzip.compress(jsonl({"prompt": "z"})))))
    monkeypatch.setattr("sys.stdin", stdin)
    assert [r.prompt for r in good(items("-"))] == ["z"]


def test_jsonl_corrupt_gzip_is_a_format_error(tmp_path: Path) -> None:
    data = gzip.compress(jsonl(*({"prompt": f"p{i}"} for i in range(1000))))
    path = write(tmp_path, "in.jsonl.gz", data[: len(data) // 2])
    with pytest.raises(InputFormatError, match="corrupt or truncated gzip"):
        items(path)


def test_stdin_like_stream_defaults_to_jsonl_and_stays_open() -> None:
    stream = io.BytesIO(jsonl({"prompt": "from stdin"}))
    assert [r.prompt for r in good(items(stream))] == ["from stdin"]
    assert not stream.closed
    text_stream = io.TextIOWrapper(io.BytesIO(jsonl({"prompt": "text"})))
    assert [r.prompt for r in good(items(text_stream))] == ["text"]


def test_stream_with_explicit_format() -> None:
    stream = io.BytesIO(b"prompt\nfrom a pipe\n")
    assert [r.prompt for r in good(items(stream, fmt="csv"))] == ["from a pipe"]


def test_records_from_a_pipe_arrive_as_their_lines_do() -> None:
    """A trickling pipe (stdin of a slow producer) is read line by line: each record is
    yielded as soon as its line is in, not once a read buffer has filled."""
    import os
    import threading
    import time

    r, w = os.pipe()
    second_written = threading.Event()
    first_seen: list[float] = []

    def feed() -> None:
        with os.fdopen(w, "w") as out:
            out.write('{"prompt": "a"}\n')
            out.flush()
            while not first_seen and time.monotonic() < deadline:
                time.sleep(0.01)
            second_written.set()
            out.write('{"prompt": "b"}\n')

    deadline = time.monotonic() + 10
    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    with os.fdopen(r, "rb") as src:
        got = []
        for line, record in iter_records(src, "jsonl"):
            if line == 1:
                assert not second_written.is_set()  # yielded before the next line came
                first_seen.append(time.monotonic())
            got.append(record)
    thread.join(5)
    assert got == [{"prompt": "a"}, {"prompt": "b"}]
