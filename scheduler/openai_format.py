"""OpenAI batch lines, in and out: the one definition of the format genqueue reads
(`--format openai`, or detected) and writes (`results --format openai`).

An input line is {"custom_id", "method", "url", "body"}; `url` picks the kind
(/v1/chat/completions: chat, /v1/completions: generate) and `body` maps onto an item
(its model, messages or prompt, and per-item params) by `BODY_FIELDS`, which says for
every body field whether it is honoured, ignored or refused. An output line is
{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}, where
`body` is a `chat.completion` or `text_completion` object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from genqueue.errors import type_name
from genqueue.resultline import ResultLine
from genqueue.scheduler.chat import Message, flatten, record_messages
from genqueue.scheduler.errors import RecordError

#: The endpoints a line may name, and the kind each becomes.
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "generate"}
#: The keys that make a JSON Lines record an OpenAI batch line (auto-detection).
LINE_KEYS = frozenset({"custom_id", "method", "url", "body"})

Rule = Literal["honoured", "ignored", "refused"]


@dataclass(frozen=True)
class BodyField:
    rule: Rule
    #: What genqueue does with it (honoured: the genqueue param; otherwise why).
    note: str
    #: The endpoints it belongs to (both when empty).
    only: str = ""


#: Every body field of both endpoints (the README's table is this one).
BODY_FIELDS: dict[str, BodyField] = {
    "model": BodyField("honoured", "the model; `--model` overrides it"),
    "messages": BodyField("honoured", "the conversation (chat kind)", "/v1/chat/completions"),
    "prompt": BodyField("honoured", "the prompt (one string)", "/v1/completions"),
    "max_tokens": BodyField("honoured", "max_new_tokens"),
    "max_completion_tokens": BodyField("honoured", "max_new_tokens", "/v1/chat/completions"),
    "temperature": BodyField("honoured", "0: greedy; above 0: sampling at that temperature"),
    "top_p": BodyField("honoured", "top_p"),
    "n": BodyField("honoured", "num_return_sequences (needs temperature > 0)"),
    "stop": BodyField("honoured", "stop (a string or a list)"),
    "seed": BodyField("honoured", "seed (the item's own)"),
    "top_k": BodyField("honoured", "top_k (vLLM extension; -1 or 0: off)"),
    "min_tokens": BodyField("honoured", "min_new_tokens (vLLM extension)"),
    "repetition_penalty": BodyField("honoured", "repetition_penalty (vLLM extension)"),
    "stream": BodyField("honoured", "false only: a batch line is never streamed"),
    "user": BodyField("ignored", "an end-user id: recorded nowhere, changes nothing"),
    "store": BodyField("ignored", "results are always stored in genqueue's SQL store"),
    "metadata": BodyField("ignored", "per-request metadata"),
    "service_tier": BodyField("ignored", "genqueue has one tier"),
    "prompt_cache_key": BodyField("ignored", "a caching hint"),
    "safety_identifier": BodyField("ignored", "an end-user id"),
    "parallel_tool_calls": BodyField("ignored", "only meaningful with tools"),
    "stream_options": BodyField("ignored", "only meaningful with stream: true"),
    "response_format": BodyField(
        "honoured",
        '{"type": "json_object"}: json_object; {"type": "json_schema", "json_schema": '
        '{"schema": ...}}: json_schema; {"type": "text"}: no constraint',
    ),
    "logprobs": BodyField(
        "honoured",
        "chat: true/false (logprobs); completions: an integer 0-5, the number of "
        "alternatives (logprobs with top_logprobs)",
    ),
    "top_logprobs": BodyField("honoured", "top_logprobs (0-20)", "/v1/chat/completions"),
    "presence_penalty": BodyField("honoured", "presence_penalty (-2 to 2)"),
    "frequency_penalty": BodyField("honoured", "frequency_penalty (-2 to 2)"),
    "min_p": BodyField("honoured", "min_p (vLLM extension)"),
    "typical_p": BodyField("honoured", "typical_p (extension)"),
    "length_penalty": BodyField("honoured", "length_penalty (vLLM extension; beam search)"),
    "early_stopping": BodyField("honoured", "early_stopping (extension; beam search)"),
    "guided_choice": BodyField("honoured", "choices (vLLM extension)"),
    "guided_regex": BodyField("honoured", "regex (vLLM extension)"),
    "guided_json": BodyField("honoured", "json_schema (vLLM extension)"),
    "logit_bias": BodyField("refused", "not supported"),
    "tools": BodyField("refused", "tool calling is not supported"),
    "tool_choice": BodyField("refused", "tool calling is not supported"),
    "functions": BodyField("refused", "function calling is not supported"),
    "function_call": BodyField("refused", "function calling is not supported"),
    "audio": BodyField("refused", "audio is not supported"),
    "modalities": BodyField("refused", "text is the only modality"),
    "prediction": BodyField("refused", "predicted outputs are not supported"),
    "web_search_options": BodyField("refused", "web search is not supported"),
    "reasoning_effort": BodyField("refused", "reasoning controls are not supported"),
    "verbosity": BodyField("refused", "not supported"),
    "echo": BodyField("refused", "echoing the prompt is not supported", "/v1/completions"),
    "best_of": BodyField("refused", "best_of is not supported", "/v1/completions"),
    "suffix": BodyField("refused", "suffix (insertion) is not supported", "/v1/completions"),
}


@dataclass(frozen=True)
class Request:
    """What one OpenAI line asks for, in genqueue's terms."""

    kind: str
    model: str | None
    prompt: str
    messages: list[Message] | None
    #: Per-item generation param overrides (not yet validated against the job's).
    params: dict[str, Any]


def is_openai_line(record: Mapping[str, Any]) -> bool:
    """Whether a JSON Lines record is an OpenAI batch line (for auto-detection)."""
    return set(record) >= LINE_KEYS


def parse_request(record: Mapping[str, Any], *, system: str | None = None) -> Request:
    """Map one OpenAI batch line onto a genqueue item. Raises RecordError saying which
    field is wrong, refused or missing."""
    extra = sorted(set(record) - LINE_KEYS)
    if extra:
        raise RecordError(f"unknown field(s) {', '.join(extra)}; a line is {sorted(LINE_KEYS)}")
    if record.get("method") != "POST":
        raise RecordError(f'method is {record.get("method")!r}; batch lines use "POST"')
    url = record.get("url")
    kind = ENDPOINTS.get(url) if isinstance(url, str) else None
    if kind is None:
        raise RecordError(
            f"url {url!r} is not supported; use {' or '.join(ENDPOINTS)} (embeddings and "
            "other endpoints are not served)"
        )
    body = record.get("body")
    if not isinstance(body, dict):
        raise RecordError(f"body must be an object, got {type_name(body)}")
    for name in body:
        rule = BODY_FIELDS.get(name)
        if rule is None or (rule.only and rule.only != url):
            raise RecordError(f"body.{name} is not a field of {url}")
        if rule.rule == "refused" and not _harmless(name, body[name]):
            raise RecordError(f"body.{name} is refused: {rule.note}")
    if body.get("stream") not in (None, False):
        raise RecordError("body.stream must be false: batch lines are never streamed")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise RecordError(f"body.model must be a model name, got {type_name(model)}")
    if kind == "chat":
        messages = record_messages(_need(body, "messages"), system=system, where="body.messages")
        prompt = flatten(messages)
    else:
        messages, prompt = None, _prompt(_need(body, "prompt"))
    return Request(kind, model, prompt, messages, _params(body, chat=kind == "chat"))


def _harmless(name: str, value: Any) -> bool:
    """A refused field set to the value that asks for nothing (logprobs: false, a
    penalty of 0, tools: [], response_format {"type": "text"}, best_of: 1): SDKs send
    these defaults, and they change nothing."""
    if name == "best_of":
        return value in (None, 1)
    if name == "response_format":
        return value is None or value == {"type": "text"}
    return value is None or (not isinstance(value, str) and not value)


def _need(body: Mapping[str, Any], name: str) -> Any:
    if name not in body:
        raise RecordError(f"body.{name} is missing")
    return body[name]


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, list):
        raise RecordError("body.prompt must be one string: put each prompt on its own line")
    if not isinstance(value, str):
        raise RecordError(f"body.prompt must be a string, got {type_name(value)}")
    if not value.strip():
        raise RecordError("body.prompt is empty")
    return value


#: genqueue's name of a param -> the body field it came from, for messages on a line.
_BODY_NAME = {
    "max_new_tokens": "max_tokens",
    "min_new_tokens": "min_tokens",
    "num_return_sequences": "n",
    "choices": "guided_choice",
    "regex": "guided_regex",
    "json_schema": "guided_json",
}


def in_body_terms(message: str) -> str:
    """A params validation message about an OpenAI line, in the line's own terms: its
    body fields (`body.max_tokens`, `body.n`), not genqueue's param names."""
    if "num_return_sequences (" in message and "needs do_sample" in message:
        return "body.n asks for several completions: give body.temperature > 0 as well"
    text = message.removeprefix("invalid params: ")
    name, sep, rest = text.partition(": ")
    if sep and name.isidentifier():
        field = _BODY_NAME.get(name, name)
        return f"body.{field}: {rest.replace(name, field)}"
    return message


def _params(body: Mapping[str, Any], *, chat: bool) -> dict[str, Any]:
    """Body fields as genqueue generation params (only those the line set)."""
    out: dict[str, Any] = {}
    tokens = {body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None}
    if len(tokens) > 1:
        raise RecordError("body.max_tokens and body.max_completion_tokens disagree; give one")
    if tokens:
        out["max_new_tokens"] = tokens.pop()
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise RecordError(f"body.temperature must be a number, got {type_name(temperature)}")
        if not 0 <= temperature <= 2:
            raise RecordError(f"body.temperature is {temperature}; allowed: 0 to 2")
        out["do_sample"] = temperature > 0
        if temperature > 0:
            out["temperature"] = temperature
    stop = body.get("stop")
    if stop is not None:
        out["stop"] = [stop] if isinstance(stop, str) else stop
    top_k = body.get("top_k")
    if top_k is not None:
        out["top_k"] = 0 if top_k == -1 else top_k
    for name, param in (
        ("top_p", "top_p"),
        ("n", "num_return_sequences"),
        ("seed", "seed"),
        ("min_tokens", "min_new_tokens"),
        ("repetition_penalty", "repetition_penalty"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
        ("min_p", "min_p"),
        ("typical_p", "typical_p"),
        ("length_penalty", "length_penalty"),
        ("early_stopping", "early_stopping"),
        ("top_logprobs", "top_logprobs"),
        ("guided_choice", "choices"),
        ("guided_regex", "regex"),
        ("guided_json", "json_schema"),
    ):
        if body.get(name) is not None:
            out[param] = body[name]
    out.update(_logprobs(body.get("logprobs"), chat=chat))
    out.update(_response_format(body.get("response_format")))
    return out


def _logprobs(value: Any, *, chat: bool) -> dict[str, Any]:
    """`logprobs`: a boolean on chat lines, the number of alternatives (0-5) on
    completions lines (OpenAI's two meanings)."""
    if value is None or value is False:
        return {}
    if chat:
        if not isinstance(value, bool):
            raise RecordError(f"body.logprobs must be true or false, got {type_name(value)}")
        return {"logprobs": True}
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 5:
        raise RecordError(f"body.logprobs must be an integer from 0 to 5, got {value!r}")
    return {"logprobs": True, "top_logprobs": value}


def _response_format(value: Any) -> dict[str, Any]:
    """OpenAI's response_format as genqueue's json_object / json_schema."""
    if value is None:
        return {}
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RecordError(
                "body.response_format.json_schema.schema must be a JSON Schema object, e.g. "
                '{"type": "json_schema", "json_schema": {"name": "x", "schema": {...}}}'
            )
        return {"json_schema": schema}
    raise RecordError(
        f"body.response_format.type is {kind!r}; use text, json_object or json_schema"
    )


# -- output lines -----------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """What an output line needs besides the result: its job, kind and model name."""

    job_id: str
    kind: str
    model: str


def _digest(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:24]


def output_line(
    line: ResultLine,
    origin: Origin,
    *,
    created: datetime | None,
    finish_reasons: list[str] | None,
    logprobs: list[Any] | None = None,
) -> dict[str, Any]:
    """The OpenAI batch output (or error) line of one result line (`logprobs`: each
    output's, as stored)."""
    key = _digest(origin.job_id, line.index)
    out: dict[str, Any] = {"id": f"batch_req_{key}", "custom_id": line.custom_id}
    if line.status == "succeeded":
        body = _completion(line, origin, key, created, finish_reasons, logprobs)
        out["response"] = {"status_code": 200, "request_id": f"req_{key}", "body": body}
        out["error"] = None
        return out
    error = line.error
    code, message = (error.code, error.message) if error else ("unknown", "no result")
    if line.status in ("cancelled", "expired"):
        # Never ran: no response, as OpenAI writes a request its batch did not reach.
        out["response"] = None
        out["error"] = {"code": f"batch_{line.status}", "message": message}
        return out
    client_side = code in _CLIENT_ERRORS
    out["response"] = {
        "status_code": 400 if client_side else 500,
        "request_id": f"req_{key}",
        "body": {
            "error": {
                "message": message,
                "type": "invalid_request_error" if client_side else "server_error",
                "param": None,
                "code": code,
            }
        },
    }
    out["error"] = None
    return out


#: Item error codes that mean the request itself cannot be served (HTTP 400).
_CLIENT_ERRORS = frozenset(
    {
        "prompt_too_long",
        "max_new_tokens_too_large",
        "remote_code_refused",
        "no_chat_template",
        "chat_template_error",
    }
)


def _completion(
    line: ResultLine,
    origin: Origin,
    key: str,
    created: datetime | None,
    finish_reasons: list[str] | None,
    logprobs: list[Any] | None,
) -> dict[str, Any]:
    texts = line.outputs if line.outputs is not None else [line.output or ""]
    reasons = finish_reasons or [line.finish_reason or "stop"] * len(texts)
    usage = line.usage
    prompt_tokens = usage.prompt_tokens if usage else 0
    completion_tokens = usage.completion_tokens if usage else 0
    chat = origin.kind == "chat"
    per_output = list(logprobs or [])
    choices = []
    for i, (text, reason) in enumerate(zip(texts, reasons, strict=False)):
        lp = per_output[i] if i < len(per_output) else None
        if chat:
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": {"content": lp["content"], "refusal": None} if lp else None,
                    "finish_reason": reason,
                }
            )
        else:
            choices.append(
                {
                    "text": text,
                    "index": i,
                    "logprobs": _legacy_logprobs(lp) if lp else None,
                    "finish_reason": reason,
                }
            )
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{key}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(created.timestamp()) if created else 0,
        "model": origin.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": None,
    }


def _legacy_logprobs(lp: Mapping[str, Any]) -> dict[str, Any]:
    """A completions choice's logprobs (OpenAI's legacy shape) from the chat shape."""
    tokens, offsets, offset = [], [], 0
    for entry in lp["content"]:
        tokens.append(entry["token"])
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": tokens,
        "token_logprobs": [e["logprob"] for e in lp["content"]],
        "top_logprobs": [
            {alt["token"]: alt["logprob"] for alt in e["top_logprobs"]} for e in lp["content"]
        ],
        "text_offset": offsets,
    }


def is_error_line(out: Mapping[str, Any]) -> bool:
    """Whether an output line belongs in the error file (OpenAI: non-200 or no response)."""
    response = out.get("response")
    return response is None or response.get("status_code") != 200
