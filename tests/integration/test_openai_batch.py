"""An OpenAI batch file through real workers (SQLite and PostgreSQL): a file naming two
models becomes one batch, and its output lines are what the `openai` package expects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from tests.integration.conftest import Deployment

pytestmark = pytest.mark.slow


def lines(gpt2: str, t5: str) -> list[dict[str, Any]]:
    out = []
    for i in range(24):
        model = gpt2 if i % 2 else t5
        if i % 3:
            body: dict[str, Any] = {
                "model": model,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": f"Question number {i}?"},
                ],
                "max_completion_tokens": 5,
            }
            url = "/v1/chat/completions"
        else:
            body = {"model": model, "prompt": f"Once upon a time {i}", "max_tokens": 4}
            url = "/v1/completions"
        if i % 5 == 0:
            body.update(temperature=0.8, seed=i, n=2)
        out.append({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body})
    # Fails at generation time: longer than the tiny GPT-2's 512-token context.
    out.append(
        {
            "custom_id": "too-long",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": gpt2, "prompt": "word " * 700, "max_tokens": 4},
        }
    )
    return out


def test_a_two_model_openai_file_is_one_complete_ordered_batch(
    deployment: Deployment, tiny_gpt2_dir: Path, tiny_t5_dir: Path, tmp_path: Path
) -> None:
    gpt2, t5 = str(tiny_gpt2_dir), str(tiny_t5_dir)
    requests = lines(gpt2, t5)
    src = tmp_path / "batch.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in requests))
    deployment.start_workers(gpt2)
    deployment.start_workers(t5)
    batch = deployment.client.submit(src)
    assert batch.startswith("batch_")
    st = deployment.client.wait(batch, timeout=240, poll=0.5)
    assert st["state"] == "completed_with_errors", st
    assert st["counts"]["total"] == 25 and st["counts"]["failed"] == 1
    assert sorted(j["kind"] for j in st["jobs"]) == ["chat", "chat", "generate", "generate"]

    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    assert deployment.client.export(batch, str(out), format="openai", errors=str(errors)) == 25
    ok = [json.loads(x) for x in out.read_text().splitlines()]
    bad = [json.loads(x) for x in errors.read_text().splitlines()]
    assert [ln["custom_id"] for ln in ok] == [f"req-{i}" for i in range(24)]  # input order
    by_id = {r["custom_id"]: r for r in requests}
    for ln in ok:
        assert ln["error"] is None and ln["response"]["status_code"] == 200
        request = by_id[ln["custom_id"]]
        body = ln["response"]["body"]
        if request["url"] == "/v1/chat/completions":
            done: ChatCompletion | Completion = ChatCompletion.model_validate(body, strict=True)
        else:
            done = Completion.model_validate(body, strict=True)
        assert done.model == request["body"]["model"]
        assert len(done.choices) == request["body"].get("n", 1)
        assert done.usage is not None and done.usage.completion_tokens > 0
    [too_long] = bad
    assert too_long["custom_id"] == "too-long" and too_long["response"]["status_code"] == 400
    assert too_long["response"]["body"]["error"]["code"] == "prompt_too_long"
    # Native result lines of the batch: one per line of the file, in order.
    native = list(deployment.client.results(batch))
    assert [ln["index"] for ln in native] == list(range(25))
