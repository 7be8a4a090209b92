"""The result line: one model behind JSONL, CSV and Parquet."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from genqueue.resultline import FLAT_COLUMNS, ResultLine


def stored(**over: Any) -> ResultLine:
    values: dict[str, Any] = {
        "index": 3,
        "custom_id": "r3",
        "status": "succeeded",
        "output": " yes",
        "outputs": None,
        "finish_reason": "stop",
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "error_code": None,
        "error_message": None,
        "truncated": False,
    }
    return ResultLine.from_stored(**{**values, **over})


def test_a_succeeded_line_in_the_documented_shape() -> None:
    line = stored()
    assert json.loads(line.to_json()) == {
        "custom_id": "r3",
        "index": 3,
        "status": "succeeded",
        "output": " yes",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
        "error": None,
    }
    assert list(json.loads(line.to_json())) == list(line.to_record())  # same keys, same order


def test_several_outputs_truncation_and_failures() -> None:
    many = stored(output=None, outputs=["a", "b"], truncated=True).to_record()
    assert many["outputs"] == ["a", "b"] and many["output"] == "a" and many["truncated"] is True
    assert list(many)[:5] == ["custom_id", "index", "status", "outputs", "output"]
    failed = stored(
        status="failed", output=None, error_code="prompt_too_long", error_message="too long"
    ).to_record()
    assert failed["usage"] is None and failed["output"] is None
    assert failed["error"] == {"code": "prompt_too_long", "message": "too long"}
    pending = stored(status=None, output=None, finish_reason=None).to_record()
    assert pending["status"] == "pending" and pending["error"] is None


def test_flat_rows_have_the_flat_columns_in_order() -> None:
    row = stored(outputs=["x", "y"], output=None).flat()
    assert list(row) == [name for name, _ in FLAT_COLUMNS]
    assert row["output"] == "x" and row["outputs"] == ["x", "y"]
    assert row["prompt_tokens"] == 5 and row["error_code"] is None


@pytest.mark.parametrize(
    "line",
    [
        {
            "custom_id": "a",
            "index": 0,
            "status": "succeeded",
            "output": None,
            "finish_reason": "stop",
            "usage": None,
            "error": None,
        },
        {
            "custom_id": "a",
            "index": 0,
            "status": "failed",
            "output": None,
            "finish_reason": None,
            "usage": None,
            "error": None,
        },
        {
            "custom_id": "a",
            "index": 0,
            "status": "weird",
            "output": None,
            "finish_reason": None,
            "usage": None,
            "error": {"code": "x", "message": "y"},
        },
        {
            "custom_id": "a",
            "index": 0,
            "status": "succeeded",
            "output": "b",
            "outputs": ["c"],
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            "error": None,
        },
        {
            "custom_id": "a",
            "index": 0,
            "status": "failed",
            "output": None,
            "extra": 1,
            "finish_reason": None,
            "usage": None,
            "error": {"code": "x", "message": "y"},
        },
    ],
)
def test_inconsistent_lines_are_not_result_lines(line: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ResultLine.model_validate(line)
