"""Structured outputs, log-probabilities and penalties through the HTTP API (the stock
`openai` SDK) give exactly what the same OpenAI lines give through the CLI, on the same
deployment and workers (greedy decoding: nothing may differ)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openai.types.chat import ChatCompletion
from openai.types.completion import Completion

from tests.api.conftest import ApiServer, openai_line, wait_batch

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["good", "bad"]}, "score": {"type": "integer"}},
    "required": ["label", "score"],
    "additionalProperties": False,
}
LABELS = ["positive", "negative", "neutral"]


def _lines(model: str) -> list[str]:
    chat = [
        openai_line(
            f"c{i}",
            model,
            response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}},
            logprobs=True,
            top_logprobs=2,
            presence_penalty=0.5,
            max_tokens=30,
        )
        for i in range(4)
    ]
    choice = [
        openai_line(f"t{i}", model, chat=False, guided_choice=LABELS, logprobs=2, max_tokens=8)
        for i in range(4)
    ]
    return chat + choice


def _by_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {ln["custom_id"]: ln["response"]["body"] for ln in lines}


def test_api_batches_honour_constraints_like_the_cli(
    api_server: ApiServer, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    client = api_server.openai("carol")
    chat_lines, text_lines = _lines("gpt2")[:4], _lines("gpt2")[4:]
    results: dict[str, dict[str, Any]] = {}
    for endpoint, lines in (("/v1/chat/completions", chat_lines), ("/v1/completions", text_lines)):
        f = client.files.create(
            file=("s.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=f.id,
            endpoint=endpoint,
            completion_window="24h",  # type: ignore[arg-type]
        )
        done = wait_batch(client, batch.id, until={"completed", "failed"})
        assert done.status == "completed", done
        out = [
            json.loads(x) for x in client.files.content(done.output_file_id).content.splitlines()
        ]
        results.update(_by_id(out))

    for cid, body in results.items():
        if cid.startswith("c"):
            choice = ChatCompletion.model_validate(body, strict=True).choices[0]
            if choice.finish_reason == "stop":  # complete: it must parse and validate
                jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)
            assert choice.logprobs is not None and choice.logprobs.content
            assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
        else:
            text = Completion.model_validate(body, strict=True).choices[0]
            assert text.text in LABELS
            assert text.logprobs is not None and text.logprobs.tokens

    # The same lines through the CLI, on the same workers (the model by its directory).
    cli: dict[str, dict[str, Any]] = {}
    for name, lines in (("chat", chat_lines), ("text", text_lines)):
        src = tmp_path / f"{name}.jsonl"
        src.write_text("\n".join(lines) + "\n")
        final = json.loads(
            api_server.gq(
                "submit", str(src), "--model", str(tiny_gpt2_dir), "--wait", "--json"
            ).stdout
        )
        job = final.get("batch_id") or final["job_id"]  # OpenAI lines become a batch
        out = api_server.gq("results", job, "--format", "openai").stdout
        cli.update(_by_id([json.loads(x) for x in out.splitlines()]))
    assert set(cli) == set(results)
    for cid, body in results.items():
        mine, theirs = body["choices"][0], cli[cid]["choices"][0]
        if cid.startswith("c"):
            assert mine["message"]["content"] == theirs["message"]["content"], cid
        else:
            assert mine["text"] == theirs["text"], cid
        assert mine["logprobs"] == theirs["logprobs"], cid
        assert mine["finish_reason"] == theirs["finish_reason"], cid
