"""Fuzzing the input readers and the template compiler with Hypothesis: random and
mutated JSONL, CSV, Parquet and gzip bytes, and random templates, raise only the
documented errors (SubmissionError and its subclasses), report problems with their
lines, and stay within time and memory bounds.

The suite runs a fixed budget. A longer run (recorded in bench/RESULTS.md):
    GENQUEUE_FUZZ_EXAMPLES=3000 python -m pytest --timeout 0 tests/hostile/test_fuzz.py
"""

from __future__ import annotations

import gzip
import io
import json
import os
import time
import tracemalloc
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genqueue.scheduler.errors import LineProblem, RecordError, SpecError, SubmissionError
from genqueue.scheduler.inputs import ParsedItem, read_items
from genqueue.scheduler.kinds import JobInputSpec, render_prompt, validate_spec
from genqueue.settings import InputLimits

EXAMPLES = int(os.environ.get("GENQUEUE_FUZZ_EXAMPLES", "150"))
#: Small limits, so that random inputs reach them.
LIMITS = InputLimits(
    max_record_bytes=2048,
    max_nesting_depth=8,
    max_field_chars=512,
    max_prompt_chars=1024,
    max_input_bytes=64 * 1024,
    max_records=200,
    max_row_group_bytes=32 * 1024,
)
SPEC = JobInputSpec(kind="generate", limits=LIMITS)
#: Per example: wall time, and memory allocated at the peak (Python's allocator).
TIME_BOUND_S = 2.0
MEMORY_BOUND = 4 * 1024 * 1024

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # timed below, with the bound the issue sets, not Hypothesis's 200 ms
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("GENQUEUE_FUZZ_EXAMPLES") is None,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
records = st.dictionaries(
    st.sampled_from(["prompt", "custom_id", "params", "text", "x"]), json_values, max_size=4
)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with a few bytes flipped, inserted, deleted or repeated."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "repeat"]))
        pos = draw(st.integers(0, max(0, len(out) - 1)))
        if op == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and out:
            del out[pos : pos + draw(st.integers(1, 8))]
        elif op == "repeat" and out:
            piece = out[pos : pos + draw(st.integers(1, 16))]
            out[pos:pos] = piece * draw(st.integers(1, 200))
    return bytes(out)


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def read_all(data: bytes, fmt: str) -> list[ParsedItem | LineProblem]:
    """Read everything, within the time and memory bounds; only documented errors."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        out = list(read_items(io.BytesIO(data), SPEC, fmt=fmt))
    except SubmissionError:
        out = []
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - started <= TIME_BOUND_S
    assert peak <= MEMORY_BOUND + 4 * len(data), peak
    for entry in out:
        assert isinstance(entry, ParsedItem | LineProblem)
        assert entry.line >= 0
        if isinstance(entry, ParsedItem):
            assert len(entry.prompt) <= LIMITS.max_prompt_chars
    return out


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    for fmt in ("jsonl", "csv", "parquet"):
        read_all(data, fmt)


@FUZZ
@given(st.lists(records, max_size=8).flatmap(lambda rows: mutated(jsonl_bytes(rows))))
def test_mutated_jsonl(data: bytes) -> None:
    read_all(data, "jsonl")
    read_all(gzip.compress(data), "jsonl")


@FUZZ
@given(
    st.lists(records, max_size=8)
    .map(lambda rows: gzip.compress(jsonl_bytes(rows)))
    .flatmap(mutated)
)
def test_mutated_gzip(data: bytes) -> None:
    read_all(data, "jsonl")


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    lines = ["prompt,params,custom_id"]
    for row in rows:
        cells = [
            json.dumps(row.get(k)) if k == "params" else str(row.get(k, ""))
            for k in ("prompt", "params", "custom_id")
        ]
        lines.append(",".join('"' + c.replace('"', '""') + '"' for c in cells))
    return ("\n".join(lines) + "\n").encode()


@FUZZ
@given(st.lists(records, max_size=8).flatmap(lambda rows: mutated(_csv_bytes(rows))))
def test_mutated_csv(data: bytes) -> None:
    read_all(data, "csv")


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    sink = io.BytesIO()
    prompts = [json.dumps(r) for r in rows] or [""]
    pq.write_table(pa.table({"prompt": prompts, "n": list(range(len(prompts)))}), sink)
    return sink.getvalue()


@FUZZ
@given(st.lists(records, max_size=8).flatmap(lambda rows: mutated(_parquet_bytes(rows))))
def test_mutated_parquet(data: bytes) -> None:
    read_all(data, "parquet")


template_text = st.lists(
    st.sampled_from([*"{}:!.<>^=+-#0123456789,_ sdfrax%*", "text", "n", "{text", "}"]),
    max_size=20,
).map("".join)


@FUZZ
@given(template_text, st.dictionaries(st.sampled_from(["text", "n"]), json_values, max_size=2))
def test_templates(template: str, record: dict[str, Any]) -> None:
    """Random templates compile or raise SpecError; rendering raises only RecordError,
    and never makes a prompt over the limit."""
    spec = replace(SPEC, template=template)
    try:
        validate_spec(spec)
    except SpecError:
        return
    tracemalloc.start()
    try:
        prompt = render_prompt(spec, record)
    except RecordError:
        return
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert len(prompt) <= LIMITS.max_prompt_chars
    assert peak <= MEMORY_BOUND


@pytest.mark.parametrize("width", [1001, 10**9, 10**30])
def test_template_widths_past_the_bound_are_refused(width: int) -> None:
    with pytest.raises(SpecError, match="at most 1000"):
        validate_spec(replace(SPEC, template=f"{{text:>{width}}}"))
