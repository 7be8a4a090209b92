"""The OpenAI-compatible Files + Batches API, driven by the stock `openai` package
(strict response validation, no retries) against a real server, real workers on two
tiny models and PostgreSQL."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from openai.types.batch import Batch
from openai.types.chat import ChatCompletion
from openai.types.completion import Completion

from tests.api.conftest import QUEUED_ITEMS_LIMIT, ApiServer, openai_line, wait_batch

pytestmark = pytest.mark.slow


def upload(client: Any, text: str, name: str = "batch.jsonl") -> Any:
    return client.files.create(file=(name, text.encode()), purpose="batch")


def parse_lines(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in content.decode().splitlines()]


def test_a_two_model_batch_runs_to_completed_with_output_and_error_files(
    api_server: ApiServer,
) -> None:
    client = api_server.openai("alice")
    lines = [openai_line(f"q{i}", "gpt2" if i % 2 else "t5") for i in range(12)]
    # Longer than the tiny GPT-2's context: fails at generation time, in the error file.
    too_long = [{"role": "user", "content": "word " * 700}]
    lines.append(openai_line("too-long", "gpt2", messages=too_long))
    f = upload(client, "\n".join(lines) + "\n")
    assert f.status == "processed" and f.purpose == "batch" and f.bytes > 0
    assert client.files.retrieve(f.id).id == f.id
    assert client.files.content(f.id).content == ("\n".join(lines) + "\n").encode()

    created = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": "a"},
    )
    assert isinstance(created, Batch)
    assert created.status in ("validating", "in_progress")
    assert created.input_file_id == f.id and created.metadata == {"team": "a"}
    done = wait_batch(client, created.id, until={"completed", "failed"})
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (13, 12)
    assert done.request_counts.failed == 1
    assert done.in_progress_at and done.completed_at and done.finalizing_at
    assert done.expires_at == done.created_at + 24 * 3600
    assert done.usage is not None and done.usage.output_tokens > 0
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert done.model == "gpt2, t5"

    assert done.output_file_id and done.error_file_id
    out = parse_lines(client.files.content(done.output_file_id).content)
    assert [ln["custom_id"] for ln in out] == [f"q{i}" for i in range(12)]  # input order
    for ln in out:
        assert ln["error"] is None and ln["response"]["status_code"] == 200
        body = ChatCompletion.model_validate(ln["response"]["body"], strict=True)
        assert body.model in ("gpt2", "t5") and body.choices[0].message.role == "assistant"
    errors = parse_lines(client.files.content(done.error_file_id).content)
    assert [ln["custom_id"] for ln in errors] == ["too-long"]
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["code"] == "prompt_too_long"
    meta = client.files.retrieve(done.output_file_id)
    assert meta.purpose == "batch_output"
    assert meta.bytes == len(client.files.content(done.output_file_id).content)

    # Completions too, on their own endpoint.
    f2 = upload(client, openai_line("c1", "gpt2", chat=False) + "\n")
    b2 = client.batches.create(
        input_file_id=f2.id, endpoint="/v1/completions", completion_window="24h"
    )
    b2 = wait_batch(client, b2.id, until={"completed", "failed"})
    assert b2.status == "completed" and b2.output_file_id
    (line,) = parse_lines(client.files.content(b2.output_file_id).content)
    Completion.model_validate(line["response"]["body"], strict=True)
    assert b2.error_file_id is None


def test_an_invalid_file_fails_with_line_numbers(api_server: ApiServer) -> None:
    client = api_server.openai("alice")
    text = "\n".join(
        [
            openai_line("ok", "gpt2"),
            '{"custom_id": "broken", "method": "POST",',
            openai_line("who", "no-such-model"),
            openai_line("wrong-url", "gpt2", chat=False),
            json.dumps(
                {
                    "custom_id": "emb",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "gpt2", "input": "x"},
                }
            ),
        ]
    )
    f = upload(client, text + "\n")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = wait_batch(client, batch.id, until={"failed", "completed", "in_progress"}, bound=60)
    assert failed.status == "failed", failed
    assert failed.failed_at and failed.errors and failed.errors.data
    by_line = {e.line: e for e in failed.errors.data}
    assert sorted(by_line) == [2, 3, 4, 5]
    assert "invalid JSON" in (by_line[2].message or "")
    assert "not offered" in (by_line[3].message or "") and "gpt2" in (by_line[3].message or "")
    assert "endpoint" in (by_line[4].message or "")
    assert "/v1/embeddings" in (by_line[5].message or "")
    assert failed.output_file_id is None and failed.request_counts.total == 0


def test_cancel_mid_run_keeps_partial_output_and_cancels_the_rest(api_server: ApiServer) -> None:
    client = api_server.openai("dave")
    n = 1500
    text = "\n".join(openai_line(f"r{i}", "gpt2", max_tokens=24) for i in range(n)) + "\n"
    batch = client.batches.create(
        input_file_id=upload(client, text).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    deadline = time.monotonic() + 120
    while True:
        batch = client.batches.retrieve(batch.id)
        if batch.request_counts and batch.request_counts.completed > 0:
            break
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
    assert batch.status == "in_progress"
    assert batch.output_file_id  # partial results while it runs
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = wait_batch(client, batch.id, until={"cancelled"}, bound=60)
    assert done.cancelled_at and done.request_counts is not None
    counts = done.request_counts
    assert 0 < counts.completed < n and counts.completed + counts.failed == n
    out = parse_lines(client.files.content(done.output_file_id).content)
    errors = parse_lines(client.files.content(done.error_file_id).content)
    assert len(out) == counts.completed and len(out) + len(errors) == n
    assert {ln["error"]["code"] for ln in errors} == {"batch_cancelled"}
    assert all(ln["response"] is None for ln in errors)
    ids = sorted(int(ln["custom_id"][1:]) for ln in out + errors)
    assert ids == list(range(n))
    # Cancelling again changes nothing.
    assert client.batches.cancel(batch.id).status == "cancelled"


def test_lists_page_to_the_end(api_server: ApiServer) -> None:
    client = api_server.openai("carol")
    made = [upload(client, openai_line(f"p{i}", "gpt2") + "\n", f"f{i}.jsonl") for i in range(5)]
    batch_ids = [
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h"
        ).id
        for f in made[:3]
    ]
    listed = [f.id for f in client.files.list(limit=2)]  # the SDK follows has_more
    assert listed == [f.id for f in reversed(made)]
    oldest_first = [f.id for f in client.files.list(limit=2, order="asc")]
    assert oldest_first == [f.id for f in made]
    page = client.files.list(limit=2)
    assert page.has_more is True and len(page.data) == 2
    assert [b.id for b in client.batches.list(limit=2)] == list(reversed(batch_ids))
    for batch_id in batch_ids:
        assert wait_batch(client, batch_id, until={"completed"}).expires_at
    gone = client.files.delete(made[4].id)
    assert gone.deleted is True and gone.id == made[4].id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(made[4].id)


def test_refused_requests_are_clear_400s(api_server: ApiServer) -> None:
    client = api_server.openai("alice")
    f = upload(client, openai_line("x", "gpt2") + "\n")
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    assert "not served" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="soon"
        )
    assert "completion_window" in err.value.message
    before = len(client.batches.list(limit=100).data)
    for window in ("99999999d", "3651d"):  # past what a date can hold, past the maximum
        with pytest.raises(openai.BadRequestError) as err:
            client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window=window
            )
        assert err.value.param == "completion_window"
        assert "longest allowed, 3650d" in err.value.message
    assert len(client.batches.list(limit=100).data) == before  # no batch was made
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    # Bodies that are no JSON object are named as such, in body terms.
    with api_server.http("alice") as http:
        for kw, expected in (
            ({}, "the request needs a JSON object as its body"),
            (
                {"content": b"{bad", "headers": {"Content-Type": "application/json"}},
                "the body is not valid JSON (Expecting property name",
            ),
            ({"data": {"input_file_id": f.id}}, "the body must be a JSON object"),
        ):
            r = http.post("/v1/batches", **kw)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["message"].startswith(f"invalid request: {expected}"), error
            assert error["param"] is None
        r = http.post("/v1/files", files={"file": ("x.jsonl", b"{}\n")})
        assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
        assert "the form has no `purpose` field; give purpose=batch" in r.text, r.text


def test_idempotency_keys_create_once(api_server: ApiServer) -> None:
    client = api_server.openai("alice")
    text = (openai_line("i1", "gpt2") + "\n").encode()
    headers = {"Idempotency-Key": "upload-1"}
    a = client.files.create(file=("a.jsonl", text), purpose="batch", extra_headers=headers)
    b = client.files.create(file=("a.jsonl", text), purpose="batch", extra_headers=headers)
    assert a.id == b.id
    key = {"Idempotency-Key": "batch-1"}
    one = client.batches.create(
        input_file_id=a.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers=key,
    )
    two = client.batches.create(
        input_file_id=a.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers=key,
    )
    assert one.id == two.id
    # The same key for another request is a 409 that names what the key made.
    with pytest.raises(openai.ConflictError) as conflict:
        client.batches.create(
            input_file_id=a.id,
            endpoint="/v1/completions",
            completion_window="1h",
            extra_headers=key,
        )
    assert one.id in conflict.value.message and "new key" in conflict.value.message
    # The message names no key: the stored one is scoped by tenant, which is no business
    # of the caller's.
    assert "- this idempotency key was used for another request" in conflict.value.message
    # Another tenant's same key is another key.
    other = api_server.openai("bob").files.create(
        file=("a.jsonl", text), purpose="batch", extra_headers=headers
    )
    assert other.id != a.id


def test_models_lists_offered_models_with_live_workers(api_server: ApiServer) -> None:
    client = api_server.openai("bob")
    deadline = time.monotonic() + 120
    while True:
        models = {m.id: m for m in client.models.list()}
        if all(getattr(models.get(n), "workers", 0) for n in ("gpt2", "t5")):
            break
        assert time.monotonic() < deadline, models
        time.sleep(0.5)
    assert set(models) == {"gpt2", "t5", "idle"} and models["idle"].workers == 0
    assert models["gpt2"].owned_by == "genqueue"


def test_a_batch_past_its_completion_window_expires(api_server: ApiServer) -> None:
    client = api_server.openai("dave")
    n = 1500
    text = "\n".join(openai_line(f"e{i}", "gpt2", max_tokens=24) for i in range(n)) + "\n"
    batch = client.batches.create(
        input_file_id=upload(client, text).id,
        endpoint="/v1/chat/completions",
        completion_window="3s",
    )
    assert batch.expires_at == batch.created_at + 3
    done = wait_batch(client, batch.id, until={"expired", "completed"}, bound=60)
    assert done.status == "expired" and done.expired_at, done
    assert done.error_file_id
    errors = parse_lines(client.files.content(done.error_file_id).content)
    assert errors and {ln["error"]["code"] for ln in errors} == {"batch_expired"}
    assert done.request_counts is not None
    assert done.request_counts.completed + len(errors) == n


def test_files_expire_after_the_time_asked(api_server: ApiServer) -> None:
    client = api_server.openai("carol")
    f = client.files.create(
        file=("short.jsonl", (openai_line("x", "gpt2") + "\n").encode()),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 2},
    )
    assert f.expires_at == f.created_at + 2
    time.sleep(2.5)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    assert f.id not in [x.id for x in client.files.list()]


def test_a_tenant_over_its_queued_items_gets_429_with_retry_after(api_server: ApiServer) -> None:
    client = api_server.openai("quota")
    half = QUEUED_ITEMS_LIMIT // 2 + 100
    text = "".join(openai_line(f"w{i}", "idle") + "\n" for i in range(half))
    first = client.batches.create(
        input_file_id=upload(client, text).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    first = wait_batch(client, first.id, until={"in_progress"}, bound=60)
    with pytest.raises(openai.RateLimitError) as err:
        client.batches.create(
            input_file_id=upload(client, text).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
    assert err.value.response.headers["retry-after"] == "30"
    assert "GENQUEUE_API_MAX_QUEUED_ITEMS" in err.value.message
    with api_server.http("quota") as http:  # the native API has the same limit
        r = http.post("/v1/jobs", json={"model": "idle", "records": [{"prompt": "x"}] * half})
        assert r.status_code == 429 and r.headers["retry-after"] == "30"
        # A job that could never fit is not told to wait: a 413 that says to split it.
        records = [{"prompt": "x"}] * (QUEUED_ITEMS_LIMIT + 1)
        r = http.post("/v1/jobs", json={"model": "idle", "records": records})
        assert r.status_code == 413 and "retry-after" not in r.headers, r.text
        assert "split it" in r.json()["error"]["message"]
        assert "GET /v1/jobs" in http.get("/v1/jobs/nope").json()["error"]["message"]
    client.batches.cancel(first.id)
    assert wait_batch(client, first.id, until={"cancelled"}, bound=60).status == "cancelled"
    # Room again.
    again = client.batches.create(
        input_file_id=upload(client, openai_line("z", "gpt2") + "\n").id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    assert wait_batch(client, again.id, until={"completed"}).status == "completed"
