"""Job input as items: format detection, record validation, templates, limits on problems."""

from __future__ import annotations

import csv
import io
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genqueue.params import GenerationParams
from genqueue.scheduler.errors import InputError, InputFormatError, LineProblem, SpecError
from genqueue.scheduler.inputs import ParsedItem, detect_format, read_items
from genqueue.scheduler.kinds import MAX_CUSTOM_ID_CHARS, JobInputSpec
from tests.scheduler.inputs_helpers import (
    SUMMARIZE,
    good,
    items,
    jsonl,
    problems,
    write,
)


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


def test_read_items_checks_the_spec_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "in.jsonl", jsonl({"prompt": "x"}))
    with pytest.raises(SpecError, match="unknown job kind"):
        read_items(path, JobInputSpec(kind="nope"))


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
        ({"max_new_tokens": "5"}, "max_new_tokens: expected a number, got a string"),
        ({"do_sample": "false"}, "do_sample: expected true or false, got a string"),
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


def test_valid_params_keep_only_the_keys_set_in_their_field_types(tmp_path: Path) -> None:
    data = jsonl(
        {"prompt": "p", "params": {"temperature": 1, "stop": ["\n"], "do_sample": True}},
        {"prompt": "p", "params": {}},
        {"prompt": "p", "params": None},
    )
    result = good(items(write(tmp_path, "in.jsonl", data)))
    assert [r.params for r in result] == [
        {"temperature": 1.0, "stop": ["\n"], "do_sample": True},
        None,
        None,
    ]
    assert isinstance(result[0].params["temperature"], float)


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


def test_input_error_lists_twenty_problems_then_counts_the_rest() -> None:
    found = [LineProblem(i, "bad", f"id{i}" if i % 2 else None) for i in range(1, 26)]
    error = InputError(found, total_problems=130, source="in.jsonl")
    lines = str(error).splitlines()
    assert lines[0] == "in.jsonl: 130 problem(s) in the input; nothing was submitted:"
    assert lines[1] == "  line 1: bad (custom_id 'id1')" and lines[2] == "  line 2: bad"
    assert len(lines) == 22 and lines[-1] == "  ... and 110 more"
    assert error.total_problems == 130 and len(error.problems) == 25


# Every character but lone surrogates and NUL, which inputs refuse (tests/hostile/).
TEXT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1
).filter(str.strip)


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
