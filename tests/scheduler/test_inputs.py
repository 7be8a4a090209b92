"""Streaming input readers: JSONL, CSV, Parquet and stdin, over real files in tmp_path."""

from __future__ import annotations

import csv
import gzip
import io
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genqueue.params import GenerationParams
from genqueue.scheduler.errors import InputError, InputFormatError, LineProblem, SpecError
from genqueue.scheduler.inputs import (
    PARQUET_BATCH_ROWS,
    ParsedItem,
    detect_format,
    iter_records,
    read_items,
)
from genqueue.scheduler.kinds import MAX_CUSTOM_ID_CHARS, JobInputSpec

GENERATE = JobInputSpec(kind="generate")
SUMMARIZE = JobInputSpec(kind="summarize")


def jsonl(*records: Any) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def items(source: Any, spec: JobInputSpec = GENERATE, **kw: Any) -> list[ParsedItem | LineProblem]:
    return list(read_items(source, spec, **kw))


def problems(results: list[ParsedItem | LineProblem]) -> dict[int, str]:
    return {r.line: r.message for r in results if isinstance(r, LineProblem)}


def good(results: list[ParsedItem | LineProblem]) -> list[ParsedItem]:
    return [r for r in results if isinstance(r, ParsedItem)]


# -- formats -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("in.jsonl", "jsonl"),
        ("in.JSON", "jsonl"),
        ("in.ndjson", "jsonl"),
        ("dir.v2/in.csv", "csv"),
        ("in.parquet", "parquet"),
        ("in.pq", "parquet"),
        ("in.jsonl.gz", "jsonl"),
        ("in.csv.gz", "csv"),
        ("-", "jsonl"),
    ],
)
def test_detect_format_by_extension(name: str, fmt: str) -> None:
    assert detect_format(name, None) == fmt


def test_detect_format_explicit_wins_and_accepts_aliases() -> None:
    assert detect_format("data.csv", "jsonl") == "jsonl"
    assert detect_format("-", "CSV") == "csv"
    assert detect_format("data.bin", "pq") == "parquet"


@pytest.mark.parametrize(
    ("name", "explicit"), [("data.txt", None), ("data", None), ("a.csv", "xml")]
)
def test_detect_format_unknown_says_how_to_fix(name: str, explicit: str | None) -> None:
    with pytest.raises(InputFormatError, match="jsonl, csv"):
        detect_format(name, explicit)


def test_gzipped_parquet_is_refused() -> None:
    with pytest.raises(InputFormatError, match="Parquet compresses internally"):
        detect_format("x.parquet.gz", None)


def test_missing_file_and_directory_fail_before_iteration(tmp_path: Path) -> None:
    with pytest.raises(InputFormatError, match="input file not found"):
        read_items(tmp_path / "nope.jsonl", GENERATE)  # no next(): raised eagerly
    with pytest.raises(InputFormatError, match="is a directory"):
        iter_records(tmp_path, "jsonl")


def test_read_items_checks_the_spec_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "in.jsonl", jsonl({"prompt": "x"}))
    with pytest.raises(SpecError, match="unknown job kind"):
        read_items(path, JobInputSpec(kind="nope"))


# -- JSON Lines --------------------------------------------------------------------------


def test_jsonl_every_kind_with_line_numbers_and_custom_ids(tmp_path: Path) -> None:
    data = jsonl({"custom_id": "a", "text": "T1"}, {"custom_id": 7, "text": "T2", "extra": [1]})
    path = write(tmp_path, "in.jsonl", b"\n  \n" + data)  # blank lines still count
    assert items(path, SUMMARIZE) == [
        ParsedItem(line=3, custom_id="a", prompt="summarize: T1", params=None),
        ParsedItem(line=4, custom_id="7", prompt="summarize: T2", params=None),
    ]


def test_jsonl_bom_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbf{"prompt": "one"}\r\n\r\n{"prompt": "two"}\r\n{"prompt": "three"}'
    result = items(write(tmp_path, "in.jsonl", data))
    assert [(r.line, r.prompt) for r in good(result)] == [(1, "one"), (3, "two"), (4, "three")]
    assert not problems(result)


def test_jsonl_invalid_json_names_the_error_and_column(tmp_path: Path) -> None:
    data = b'{"prompt": "ok"}\n{"prompt": "x",}\n{"prompt": "fine"}\n'
    result = items(write(tmp_path, "in.jsonl", data))
    assert problems(result) == {
        2: "invalid JSON: Expecting property name enclosed in double quotes at column 16"
    }
    assert [r.line for r in good(result)] == [1, 3]


def test_jsonl_truncated_last_line(tmp_path: Path) -> None:
    data = jsonl({"prompt": "whole"}) + b'{"prompt": "cut of'
    result = items(write(tmp_path, "in.jsonl", data))
    message = problems(result)[2]
    assert message.startswith("truncated or invalid JSON (the last line has no newline")
    assert (
        "was the file cut off?" in message
        and "Unterminated string starting at column 12" in message
    )


def test_jsonl_non_object_values(tmp_path: Path) -> None:
    data = b'["a"]\n"text"\n42\nnull\n'
    assert problems(items(write(tmp_path, "in.jsonl", data))) == {
        1: "expected a JSON object on each line, got array",
        2: "expected a JSON object on each line, got str",
        3: "expected a JSON object on each line, got int",
        4: "expected a JSON object on each line, got NoneType",
    }


def test_jsonl_pretty_printed_json_gets_a_hint(tmp_path: Path) -> None:
    data = b'[\n  {"prompt": "x"}\n]\n'
    found = problems(items(write(tmp_path, "in.json", data)))
    assert "JSON Lines needs one complete object per line" in found[1]


def test_jsonl_non_utf8_bytes_spoil_only_their_line(tmp_path: Path) -> None:
    data = jsonl({"prompt": "before"}) + b'{"prompt": "caf\xe9"}\n' + jsonl({"prompt": "after"})
    result = items(write(tmp_path, "in.jsonl", data))
    assert problems(result) == {
        2: "not valid UTF-8 (byte 0xe9 at column 16); save the file as UTF-8"
    }
    assert [r.prompt for r in good(result)] == ["before", "after"]


def test_jsonl_column_of_bad_byte_counts_characters(tmp_path: Path) -> None:
    data = '{"prompt": "ü'.encode() + b'\xff"}\n'
    assert "at column 14" in problems(items(write(tmp_path, "in.jsonl", data)))[1]


def test_utf16_file_is_refused_with_a_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "in.jsonl", '{"prompt": "x"}\n'.encode("utf-16"))
    with pytest.raises(InputFormatError, match="UTF-16 text; save it as UTF-8"):
        items(path)


def test_jsonl_unicode_line_separators_inside_strings(tmp_path: Path) -> None:
    text = "a\u2028b\u2029c\x85d\x0be\rf"
    data = json.dumps({"prompt": text}, ensure_ascii=False).encode() + b"\n"
    assert good(items(write(tmp_path, "in.jsonl", data)))[0].prompt == text


def test_jsonl_ten_megabyte_record(tmp_path: Path) -> None:
    text = "word " * 2_100_000
    path = write(tmp_path, "big.jsonl", jsonl({"text": text}, {"text": "small"}))
    assert path.stat().st_size > 10_000_000
    result = items(path, SUMMARIZE)
    assert [r.line for r in good(result)] == [1, 2]
    assert good(result)[0].prompt == "summarize: " + text


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


# -- fields, custom_id and params --------------------------------------------------------


def test_wrong_types_missing_and_empty_fields(tmp_path: Path) -> None:
    data = jsonl(
        {"prompt": 5}, {"text": "x"}, {"prompt": "  "}, {"prompt": ["a"]}, {"prompt": "ok"}
    )
    found = problems(items(write(tmp_path, "in.jsonl", data)))
    assert found == {
        1: "field 'prompt' must be a string, got number (5)",
        2: "missing required field 'prompt' for kind 'generate'; the record has: text",
        3: "field 'prompt' is empty; kind 'generate' needs text in it",
        4: "field 'prompt' must be a string, got array (['a'])",
    }


def test_custom_id_rules(tmp_path: Path) -> None:
    long_id = "x" * (MAX_CUSTOM_ID_CHARS + 1)
    data = jsonl(
        {"prompt": "p", "custom_id": ""},
        {"prompt": "p", "custom_id": True},
        {"prompt": "p", "custom_id": 1.5},
        {"prompt": "p", "custom_id": long_id},
        {"prompt": "p", "custom_id": "x" * MAX_CUSTOM_ID_CHARS},
        {"prompt": "p", "custom_id": None},
    )
    result = items(write(tmp_path, "in.jsonl", data))
    found = problems(result)
    assert found[1] == "custom_id is empty; leave it out to get a generated id"
    assert found[2].startswith("custom_id must be a string or an integer, got boolean")
    assert found[3].startswith("custom_id must be a string or an integer, got number")
    assert found[4] == "custom_id is 513 characters long; at most 512 allowed"
    assert [r.custom_id for r in good(result)] == ["x" * MAX_CUSTOM_ID_CHARS, None]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"temperature": -1},
            "temperature: Input should be greater than 0 (got -1; allowed: 0 < temperature <= 100)",
        ),
        ({"top_p": 0}, "top_p: Input should be greater than 0 (got 0; allowed: 0 < top_p <= 1)"),
        (
            {"top_p": 1.5},
            "top_p: Input should be less than or equal to 1 (got 1.5; allowed: 0 < top_p <= 1)",
        ),
        (
            {"max_new_tokens": 0},
            "max_new_tokens: Input should be greater than or equal to 1 "
            "(got 0; allowed: 1 <= max_new_tokens <= 32768)",
        ),
        ({"temprature": 0.5}, "temprature: unknown parameter (allowed: max_new_tokens, "),
        ({"max_new_tokens": True}, "max_new_tokens: expected a number, got a boolean"),
    ],
)
def test_per_item_params_errors_name_field_and_range(
    tmp_path: Path, params: dict[str, Any], expected: str
) -> None:
    path = write(tmp_path, "in.jsonl", jsonl({"custom_id": "c1", "prompt": "p", "params": params}))
    (problem,) = items(path)
    assert isinstance(problem, LineProblem)
    assert problem.message.startswith("invalid params: " + expected)
    assert str(problem).startswith("line 1: invalid params: ")
    assert str(problem).endswith("(custom_id 'c1')")


def test_per_item_params_are_checked_against_the_job_params(tmp_path: Path) -> None:
    spec = JobInputSpec(kind="generate", base_params=GenerationParams(max_new_tokens=8))
    path = write(tmp_path, "in.jsonl", jsonl({"prompt": "p", "params": {"min_new_tokens": 9}}))
    assert problems(items(path, spec)) == {
        1: "invalid params: min_new_tokens (9) must be <= max_new_tokens (8)"
    }


def test_valid_params_keep_only_the_keys_set_and_are_coerced(tmp_path: Path) -> None:
    data = jsonl(
        {"prompt": "p", "params": {"temperature": "0.5", "stop": ["\n"], "do_sample": True}},
        {"prompt": "p", "params": {}},
        {"prompt": "p", "params": None},
    )
    result = good(items(write(tmp_path, "in.jsonl", data)))
    assert [r.params for r in result] == [
        {"temperature": 0.5, "stop": ["\n"], "do_sample": True},
        None,
        None,
    ]


def test_params_must_be_an_object_in_jsonl(tmp_path: Path) -> None:
    data = jsonl({"prompt": "p", "params": '{"temperature": 0.5}'}, {"prompt": "p", "params": [1]})
    found = problems(items(write(tmp_path, "in.jsonl", data)))
    assert set(found) == {1, 2}
    assert all(
        m.startswith("params must be an object of generation parameters") for m in found.values()
    )


def test_all_problems_of_one_record_are_reported_together(tmp_path: Path) -> None:
    data = jsonl({"custom_id": "", "params": {"top_p": 2}, "text": "wrong field"})
    message = problems(items(write(tmp_path, "in.jsonl", data)))[1]
    assert "custom_id is empty" in message and "top_p" in message
    assert "missing required field 'prompt'" in message


def test_template_job_over_jsonl(tmp_path: Path) -> None:
    spec = JobInputSpec(kind="translate", template="{src} → {tgt}: {body}", defaults={"src": "en"})
    data = jsonl({"tgt": "de", "body": "Hi"}, {"tgt": "fr"})
    result = items(write(tmp_path, "in.jsonl", data), spec)
    assert good(result)[0].prompt == "en → de: Hi"
    assert problems(result) == {
        2: "template field {body} is not in the record; the record has: tgt; job defaults: src"
    }


# -- CSV ---------------------------------------------------------------------------------


def test_csv_with_params_column_and_multiline_fields(tmp_path: Path) -> None:
    data = (
        b"custom_id,text,params\r\n"
        b'a,"first",""\r\n'
        b'b,"spans\r\ntwo lines","{""temperature"": 0.25}"\r\n'
        b"c,third,\r\n"
    )
    result = items(write(tmp_path, "in.csv", data), SUMMARIZE)
    assert result == [
        ParsedItem(line=2, custom_id="a", prompt="summarize: first", params=None),
        ParsedItem(3, "b", "summarize: spans\r\ntwo lines", {"temperature": 0.25}),
        ParsedItem(line=5, custom_id="c", prompt="summarize: third", params=None),
    ]


def test_csv_wrong_column_count_and_bad_params(tmp_path: Path) -> None:
    data = (
        b"text,params\n"
        b"one,\n"
        b"two,,extra\n"
        b"three\n"
        b"four,{temperature: 1}\n"
        b'five,"[1, 2]"\n'
        b'six,"{""top_p"": 0}"\n'
        b"seven,\n"
    )
    result = items(write(tmp_path, "in.csv", data), SUMMARIZE)
    found = problems(result)
    assert found[3] == "row has 3 field(s) but the header has 2; quote fields that contain commas"
    assert found[4].startswith("row has 1 field(s) but the header has 2")
    assert found[5].startswith("params is not valid JSON: Expecting property name")
    assert found[6].startswith("params must be an object of generation parameters")
    assert found[7].startswith("invalid params: top_p: Input should be greater than 0")
    assert [r.line for r in good(result)] == [2, 8]


def test_csv_unclosed_quote_is_pointed_out(tmp_path: Path) -> None:
    data = b'text,n\nok,1\n"never closed,2\nnext,3\nlast,4\n'
    found = problems(items(write(tmp_path, "in.csv", data), SUMMARIZE))
    assert found == {
        3: "row has 1 field(s) but the header has 2 (the row runs from line 3 to 5: an "
        "unclosed quote?); quote fields that contain commas"
    }


def test_csv_bom_blank_rows_and_header_spaces(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbfcustom_id, prompt\n\n1,hello\n,\n2,world"
    result = items(write(tmp_path, "in.csv", data))
    assert [(r.line, r.custom_id, r.prompt) for r in good(result)] == [
        (3, "1", "hello"),
        (5, "2", "world"),
    ]


def test_csv_non_utf8_row_is_a_problem_and_reading_goes_on(tmp_path: Path) -> None:
    data = b"prompt\nbefore\ncaf\xe9 cr\xe8me\nafter\n"
    result = items(write(tmp_path, "in.csv", data))
    assert problems(result) == {
        3: "not valid UTF-8 (byte 0xe9 in column 'prompt'); save the file as UTF-8"
    }
    assert [r.prompt for r in good(result)] == ["before", "after"]


def test_csv_numbers_are_strings_and_empty_required_cells_are_empty(tmp_path: Path) -> None:
    data = b"custom_id,text,target_lang\n1,42,German\n2,,German\n3,Hi,\n"
    result = items(write(tmp_path, "in.csv", data), JobInputSpec(kind="translate"))
    assert good(result)[0].prompt == "translate to German: 42"
    assert problems(result)[3] == "field 'text' is empty; kind 'translate' needs text in it"
    assert problems(result)[4] == "field 'target_lang' is empty; kind 'translate' needs text in it"


def test_csv_field_larger_than_the_csv_module_default(tmp_path: Path) -> None:
    text = "x" * 1_000_000
    path = tmp_path / "big.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text"], [text]])
    assert good(items(path, SUMMARIZE))[0].prompt == "summarize: " + text


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "is empty; a CSV input needs a header row"),
        (b"text,text\nx,y\n", "duplicate column name(s) in the header: text"),
        (b"text,,n\nx,y,z\n", "column 2 of the header row has no name"),
        (b"t\xffext\nx\n", "the header row is not valid UTF-8"),
    ],
)
def test_csv_bad_header_is_a_format_error(tmp_path: Path, data: bytes, fragment: str) -> None:
    with pytest.raises(InputFormatError) as err:
        items(write(tmp_path, "in.csv", data), SUMMARIZE)
    assert fragment in str(err.value)


def test_csv_stream_from_a_named_file_object(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", b"prompt\nnamed\n")
    with path.open("rb") as f:
        assert [r.prompt for r in good(items(f))] == ["named"]
        assert not f.closed


# -- Parquet -----------------------------------------------------------------------------


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


# -- errors ------------------------------------------------------------------------------


def test_input_error_lists_twenty_problems_then_counts_the_rest() -> None:
    found = [LineProblem(i, "bad", f"id{i}" if i % 2 else None) for i in range(1, 26)]
    error = InputError(found, total_problems=130, source="in.jsonl")
    lines = str(error).splitlines()
    assert lines[0] == "in.jsonl: 130 problem(s) in the input; nothing was submitted:"
    assert lines[1] == "  line 1: bad (custom_id 'id1')" and lines[2] == "  line 2: bad"
    assert len(lines) == 22 and lines[-1] == "  ... and 110 more"
    assert error.total_problems == 130 and len(error.problems) == 25


# -- properties and memory ---------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1).filter(str.strip)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(TEXT, min_size=1, max_size=5))
def test_any_text_round_trips_through_jsonl_and_csv(texts: list[str]) -> None:
    as_jsonl = b"".join(
        json.dumps({"prompt": t}, ensure_ascii=False).encode() + b"\n" for t in texts
    )
    as_csv = io.StringIO(newline="")
    csv.writer(as_csv).writerows([["prompt"], *([t] for t in texts)])
    for data, fmt in ((as_jsonl, "jsonl"), (as_csv.getvalue().encode(), "csv")):
        assert [r.prompt for r in good(items(io.BytesIO(data), fmt=fmt))] == texts


def test_memory_stays_bounded_while_streaming_200k_lines(tmp_path: Path) -> None:
    n = 200_000
    path = tmp_path / "many.jsonl"
    with path.open("wb") as f:
        for i in range(n):
            params = ', "params": {"temperature": 0.7}' if i % 10 == 0 else ""
            f.write(
                b'{"custom_id": "id-%d", "text": "document number %d, some words"%s}\n'
                % (i, i, params.encode())
            )
    assert path.stat().st_size > 10_000_000
    started = time.perf_counter()
    tracemalloc.start()
    try:
        count = sum(1 for r in read_items(path, SUMMARIZE) if isinstance(r, ParsedItem))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    # Well below the file's size: even reading the file whole once would exceed it.
    assert peak < 5_000_000, f"peak {peak / 1e6:.1f} MB: reading is not streaming"
    assert time.perf_counter() - started < 30
