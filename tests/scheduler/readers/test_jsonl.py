"""The JSON Lines reader: line numbers, encodings, invalid and truncated JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from genqueue.scheduler.errors import InputFormatError
from genqueue.scheduler.inputs import ParsedItem
from genqueue.settings import InputLimits, MiB
from tests.scheduler.inputs_helpers import (
    SUMMARIZE,
    good,
    items,
    jsonl,
    problems,
    write,
)


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


def test_csv_read_as_jsonl_is_pointed_out(tmp_path: Path) -> None:
    data = b"custom_id,prompt\nc1,hello\n"
    found = problems(items(write(tmp_path, "in.jsonl", data)))
    assert set(found) == {1, 2}
    assert all("is this CSV? pass --format csv" in m for m in found.values())


def test_jsonl_non_object_values(tmp_path: Path) -> None:
    data = b'["a"]\n"text"\n42\nnull\n'
    assert problems(items(write(tmp_path, "in.jsonl", data))) == {
        1: "expected a JSON object on each line, got array",
        2: "expected a JSON object on each line, got string",
        3: "expected a JSON object on each line, got number",
        4: "expected a JSON object on each line, got null",
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


def test_jsonl_ten_megabyte_record_under_raised_limits(tmp_path: Path) -> None:
    text = "word " * 2_100_000
    path = write(tmp_path, "big.jsonl", jsonl({"text": text}, {"text": "small"}))
    assert path.stat().st_size > 10_000_000
    # Over the default limit (8 MiB a line): a problem with its size, the next line read.
    assert problems(items(path, SUMMARIZE)) == {
        1: "line is 10,500,012 bytes; at most 8,388,608 are allowed "
        "(GENQUEUE_MAX_RECORD_BYTES); it was not read into memory"
    }
    raised = InputLimits(
        max_record_bytes=16 * MiB, max_field_chars=11_000_000, max_prompt_chars=11_000_000
    )
    result = items(path, replace(SUMMARIZE, limits=raised))
    assert [r.line for r in good(result)] == [1, 2]
    assert good(result)[0].prompt == "summarize: " + text
