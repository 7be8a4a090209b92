"""The result line: one model for every way a job's results leave genqueue.

JSONL lines are `ResultLine.to_json()`; CSV and Parquet rows are `ResultLine.flat()`
with the columns of `FLAT_COLUMNS`; the tests validate exported lines against this
model and its JSON schema; the HTTP API returns the same lines. Storage builds lines
with `ResultLine.from_stored` from its flat result columns.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Status = Literal["succeeded", "failed", "cancelled", "expired", "pending"]
FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    """Tokens of one item: its prompt, and what was generated (summed over outputs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class LineError(BaseModel):
    """Why an item has no output: a stable code and a message saying what to do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    message: str


class TopLogprob(BaseModel):
    """An alternative token at one position (OpenAI's `top_logprobs[j]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(BaseModel):
    """One generated token (OpenAI's `logprobs.content[i]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class Logprobs(BaseModel):
    """The log-probabilities of one output, in OpenAI's shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    content: list[TokenLogprob]


class ResultLine(BaseModel):
    """One line of results per input record, in input order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    custom_id: str = Field(min_length=1, description="the record's id (`line-N` by default)")
    index: int = Field(ge=0, description="the record's 0-based position in the input")
    status: Status
    #: Every returned sequence; present only with num_return_sequences > 1.
    outputs: list[str] | None = None
    output: str | None = Field(description="the generated text (the first of `outputs`)")
    finish_reason: FinishReason | None
    usage: Usage | None
    error: LineError | None
    #: Present (and true) only when the prompt was cut to fit the model's context.
    truncated: bool = False
    #: The generation before post-processing (present with `postprocess`).
    raw_output: str | None = None
    #: Every raw output; present only with post-processing and several outputs.
    raw_outputs: list[str] | None = None
    #: The output parsed as JSON (json_schema / json_object, complete outputs only).
    parsed: Any = None
    #: Present (and true) only when a constrained output was cut by max_new_tokens
    #: before its grammar was complete: it does not satisfy the constraint. With several
    #: outputs, `parsed` and `incomplete` describe the first, as `output` does.
    incomplete: bool = False
    #: The first output's token log-probabilities (with `logprobs`).
    logprobs: Logprobs | None = None
    #: Every label's total log-probability given the prompt (with `score_choices`).
    choice_scores: dict[str, float] | None = None
    #: Present only when `--reuse` copied this result from an identical succeeded item
    #: (same model revision, engine, params and rendered prompt): that item's job id.
    reused_from: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.status == "succeeded":
            if self.output is None or self.usage is None or self.error is not None:
                raise ValueError("a succeeded line has an output and usage, and no error")
        elif self.status != "pending" and self.error is None:
            raise ValueError(f"a {self.status} line has an error")
        if self.outputs is not None and (not self.outputs or self.output != self.outputs[0]):
            raise ValueError("output must be the first of outputs")
        if self.incomplete and self.parsed is not None:
            raise ValueError("an incomplete output has no parsed value")
        return self

    @classmethod
    def from_stored(
        cls,
        *,
        index: int,
        custom_id: str,
        status: str | None,
        output: str | None,
        outputs: list[str] | None,
        finish_reason: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        error_code: str | None,
        error_message: str | None,
        truncated: bool | None,
        raw_output: str | None = None,
        raw_outputs: list[str] | None = None,
        parsed: Any = None,
        incomplete: bool | None = None,
        logprobs: list[Any] | None = None,
        choice_scores: dict[str, float] | None = None,
        reused_from: str | None = None,
    ) -> ResultLine:
        """The line for a stored result (columns as in the `results` table; no row yet:
        status None, reported `pending`)."""
        succeeded = status == "succeeded"
        return cls.model_validate(
            {
                "custom_id": custom_id,
                "index": index,
                "status": status or "pending",
                "outputs": outputs,
                "output": outputs[0] if outputs else output,
                "finish_reason": finish_reason,
                "usage": (
                    {
                        "prompt_tokens": prompt_tokens or 0,
                        "completion_tokens": completion_tokens or 0,
                    }
                    if succeeded
                    else None
                ),
                "error": (
                    {"code": error_code, "message": error_message or ""} if error_code else None
                ),
                "truncated": bool(truncated),
                "raw_output": raw_outputs[0] if raw_outputs else raw_output,
                "raw_outputs": raw_outputs,
                "parsed": parsed,
                # Both describe the first output; rows stored before that was so could
                # mark a later output's incompleteness beside the first one's value.
                "incomplete": bool(incomplete) and parsed is None,
                "logprobs": logprobs[0] if logprobs else None,
                "choice_scores": choice_scores,
                "reused_from": reused_from,
            }
        )

    def to_json(self) -> str:
        """The JSONL line (without its newline): `outputs`, `truncated` and the fields
        of optional features appear only when they say something."""
        return self.model_dump_json(exclude_defaults=True)

    def to_record(self) -> dict[str, Any]:
        """The JSONL line as a dict (what `Client.results` yields)."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def flat(self) -> dict[str, Any]:
        """The line as one flat row (CSV, Parquet): `FLAT_COLUMNS`, in order."""
        return {
            "custom_id": self.custom_id,
            "index": self.index,
            "status": self.status,
            "output": self.output,
            "outputs": self.outputs,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.usage.prompt_tokens if self.usage else None,
            "completion_tokens": self.usage.completion_tokens if self.usage else None,
            "error_code": self.error.code if self.error else None,
            "error_message": self.error.message if self.error else None,
            "truncated": self.truncated,
            "raw_output": self.raw_output,
            "parsed": _json_text(self.parsed),
            "incomplete": self.incomplete,
            "logprobs": _json_text(self.logprobs.model_dump() if self.logprobs else None),
            "choice_scores": _json_text(self.choice_scores),
            "reused_from": self.reused_from,
        }


def _json_text(value: Any) -> str | None:
    """A JSON value as JSON text in a flat row (None stays empty)."""
    return None if value is None else json.dumps(value, ensure_ascii=False)


#: Flat rows' columns and their value types ("list" is a list of strings: a JSON array
#: in CSV, a list column in Parquet).
FLAT_COLUMNS: tuple[tuple[str, Literal["string", "int", "bool", "list"]], ...] = (
    ("custom_id", "string"),
    ("index", "int"),
    ("status", "string"),
    ("output", "string"),
    ("outputs", "list"),
    ("finish_reason", "string"),
    ("prompt_tokens", "int"),
    ("completion_tokens", "int"),
    ("error_code", "string"),
    ("error_message", "string"),
    ("truncated", "bool"),
    ("raw_output", "string"),
    ("parsed", "string"),  # JSON text
    ("incomplete", "bool"),
    ("logprobs", "string"),  # JSON text: {"content": [...]}
    ("choice_scores", "string"),  # JSON text: {label: logprob}
    ("reused_from", "string"),
)
