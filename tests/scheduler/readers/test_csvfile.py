"""The CSV reader: headers, quoting, params as JSON text, encodings."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from genqueue.scheduler.errors import InputFormatError
from genqueue.scheduler.inputs import ParsedItem
from genqueue.scheduler.kinds import JobInputSpec
from tests.scheduler.inputs_helpers import (
    SUMMARIZE,
    good,
    items,
    problems,
    write,
)


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
    never_closed = (
        "a quoted field opened on line 3 is never closed: the input ends inside it; add "
        'the closing quote (")'
    )
    assert found == {3: never_closed}
    # Even where the swallowed rest fits the header, not taken as one long field.
    data = b'custom_id,text\nc0,ok\nc1,"unterminated\nmore\n'
    assert problems(items(write(tmp_path, "b.csv", data), SUMMARIZE)) == {3: never_closed}
    # A quote inside an unquoted field is a character (5" screen), not an opening.
    data = b'custom_id,text\nc0,a 5" screen\nc1,12" ruler'
    assert [it.prompt for it in items(write(tmp_path, "c.csv", data), SUMMARIZE)] == [
        'summarize: a 5" screen',
        'summarize: 12" ruler',
    ]


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
