"""OpenAI batch lines: every body field mapped, ignored or refused by name, and output
lines that the `openai` package's own types accept."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from genqueue.resultline import ResultLine
from genqueue.scheduler.errors import RecordError
from genqueue.scheduler.openai_format import (
    BODY_FIELDS,
    Origin,
    is_error_line,
    is_openai_line,
    output_line,
    parse_request,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def line(url: str = "/v1/chat/completions", **body: Any) -> dict[str, Any]:
    if url == "/v1/chat/completions":
        body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    else:
        body.setdefault("prompt", "Once")
    return {"custom_id": "c", "method": "POST", "url": url, "body": {"model": "m", **body}}


def test_the_url_picks_the_kind_and_the_body_maps_to_params() -> None:
    chat = parse_request(
        line(max_tokens=8, temperature=0.5, top_p=0.9, n=2, stop="\n", seed=3, top_k=-1)
    )
    assert (chat.kind, chat.model, chat.prompt) == ("chat", "m", "user: Hi")
    assert chat.messages == [{"role": "user", "content": "Hi"}]
    assert chat.params == {
        "max_new_tokens": 8,
        "do_sample": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "num_return_sequences": 2,
        "stop": ["\n"],
        "seed": 3,
        "top_k": 0,
    }
    text = parse_request(line("/v1/completions", prompt=["One"], temperature=0, min_tokens=2))
    assert (text.kind, text.prompt, text.messages) == ("generate", "One", None)
    assert text.params == {"do_sample": False, "min_new_tokens": 2}
    assert parse_request(line(max_completion_tokens=5)).params == {"max_new_tokens": 5}


def test_fields_that_ask_for_nothing_pass_and_harmless_ones_are_ignored() -> None:
    req = parse_request(
        line(
            logprobs=False,
            response_format={"type": "text"},
            tools=[],
            user="u1",
            store=True,
            metadata={"a": "b"},
            stream=False,
        )
    )
    assert req.params == {}


def test_structured_outputs_logprobs_and_penalties_map_onto_params() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = parse_request(
        line(
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
            logprobs=True,
            top_logprobs=3,
            presence_penalty=0.5,
            frequency_penalty=-0.25,
            min_p=0.1,
            typical_p=0.9,
        )
    )
    assert chat.params == {
        "json_schema": schema,
        "logprobs": True,
        "top_logprobs": 3,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "min_p": 0.1,
        "typical_p": 0.9,
    }
    assert parse_request(line(response_format={"type": "json_object"})).params == {
        "json_object": True
    }
    text = parse_request(line("/v1/completions", logprobs=2, guided_choice=["a", "b"]))
    assert text.params == {"logprobs": True, "top_logprobs": 2, "choices": ["a", "b"]}
    assert parse_request(line(guided_regex="[0-9]+")).params == {"regex": "[0-9]+"}
    assert parse_request(line(presence_penalty=0)).params == {"presence_penalty": 0}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (line(logprobs=3), "body.logprobs must be true or false"),
        (line("/v1/completions", logprobs=9), "body.logprobs must be an integer from 0 to 5"),
        (line("/v1/completions", top_logprobs=2), "body.top_logprobs is not a field of"),
        (line(response_format={"type": "yaml"}), "body.response_format.type is 'yaml'"),
        (
            line(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
            "body.response_format.json_schema.schema must be a JSON Schema object",
        ),
        (line(logit_bias={"1": 5}), "body.logit_bias is refused: not supported"),
        (line(tools=[{"type": "function"}]), "body.tools is refused: tool calling"),
        (line(stream=True), "body.stream must be false"),
        (line(echo=True), "body.echo is not a field of /v1/chat/completions"),
        (line("/v1/completions", echo=True), "body.echo is refused"),
        (line(frobnicate=1), "body.frobnicate is not a field of /v1/chat/completions"),
        (line(temperature=3), "body.temperature is 3; allowed: 0 to 2"),
        (line(max_tokens=5, max_completion_tokens=6), "disagree"),
        (line("/v1/completions", prompt=["a", "b"]), "put each prompt on its own line"),
        (line("/v1/completions", prompt=""), "body.prompt is empty"),
        (line(messages=[{"role": "bot", "content": "x"}]), "body.messages[0].role is 'bot'"),
        ({**line(), "url": "/v1/embeddings"}, "url '/v1/embeddings' is not supported"),
        ({**line(), "method": "GET"}, "method is 'GET'; batch lines use \"POST\""),
        ({**line(), "extra": 1}, "unknown field(s) extra"),
        ({**line(), "body": []}, "body must be an object, got array"),
        (line(model=""), "body.model must be a model name"),
    ],
)
def test_what_cannot_be_served_is_refused_by_name(record: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError) as exc:
        parse_request(record)
    assert message in str(exc.value)


def test_detection_and_the_readme_table_cover_every_body_field() -> None:
    assert is_openai_line(line()) and not is_openai_line({"custom_id": "x", "prompt": "y"})
    table = README.read_text()
    for name, field in BODY_FIELDS.items():
        assert re.search(rf"\| `{name}` \| {field.rule} \|", table), f"README lacks {name}"


def result(status: str = "succeeded", **over: Any) -> ResultLine:
    values: dict[str, Any] = {
        "index": 4,
        "custom_id": "c4",
        "status": status,
        "output": " hello" if status == "succeeded" else None,
        "outputs": None,
        "finish_reason": "stop" if status == "succeeded" else None,
        "prompt_tokens": 3 if status == "succeeded" else None,
        "completion_tokens": 2 if status == "succeeded" else None,
        "error_code": None if status == "succeeded" else "prompt_too_long",
        "error_message": None if status == "succeeded" else "too long",
        "truncated": False,
    }
    return ResultLine.from_stored(**{**values, **over})


WHEN = datetime(2026, 12, 1, tzinfo=UTC)


def test_succeeded_lines_are_sdk_completions() -> None:
    chat = output_line(
        result(outputs=["a", "b"], output=None),
        Origin("job1", "chat", "my-model"),
        created=WHEN,
        finish_reasons=["stop", "length"],
    )
    assert chat["custom_id"] == "c4" and chat["error"] is None and not is_error_line(chat)
    assert chat["response"]["status_code"] == 200
    body = ChatCompletion.model_validate(chat["response"]["body"], strict=True)
    assert body.model == "my-model" and body.created == int(WHEN.timestamp())
    assert [(c.message.content, c.finish_reason) for c in body.choices] == [
        ("a", "stop"),
        ("b", "length"),
    ]
    assert body.usage is not None and body.usage.total_tokens == 5
    text = output_line(result(), Origin("job1", "generate", "m"), created=WHEN, finish_reasons=None)
    done = Completion.model_validate(text["response"]["body"], strict=True)
    assert done.choices[0].text == " hello" and done.choices[0].finish_reason == "stop"
    again = output_line(
        result(), Origin("job1", "generate", "m"), created=WHEN, finish_reasons=None
    )
    assert again == text


def test_failed_and_never_run_lines_are_error_lines() -> None:
    origin = Origin("job1", "chat", "m")
    bad = output_line(result("failed"), origin, created=WHEN, finish_reasons=None)
    assert is_error_line(bad) and bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["code"] == "prompt_too_long"
    crash = output_line(
        result("failed", error_code="attempts_exhausted"), origin, created=WHEN, finish_reasons=None
    )
    assert crash["response"]["status_code"] == 500
    assert crash["response"]["body"]["error"]["type"] == "server_error"
    for status in ("cancelled", "expired"):
        out = output_line(result(status), origin, created=None, finish_reasons=None)
        assert out["response"] is None and out["error"]["code"] == f"batch_{status}"
