"""Uploads stream to disk: a file over the limit is refused with 413 while it streams in,
and the server's memory does not grow with it (its RSS, measured with psutil)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import openai
import psutil
import pytest

from tests.api.conftest import LINES_LIMIT, UPLOAD_LIMIT, ApiServer

pytestmark = pytest.mark.slow

#: Long lines, so that the uploads stay under the line limit (tested on its own below).
CHUNK = (b'{"custom_id": "x", "pad": "' + b"y" * 1000 + b'"}\n') * 64


def multipart(total: int, boundary: str = "gqboundary") -> Iterator[bytes]:
    """A multipart body with a `file` part of `total` bytes, generated as it is sent."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    sent = 0
    while sent < total:
        part = CHUNK[: total - sent]
        sent += len(part)
        yield part
    yield f"\r\n--{boundary}--\r\n".encode()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def test_an_upload_over_the_limit_is_refused_without_growing_memory(
    api_server: ApiServer,
) -> None:
    files_before = sum(len(f) for _, _, f in os.walk(api_server.env["GENQUEUE_FILES_DIR"]))
    before = rss_mb(api_server.api_pid)
    headers = {"Content-Type": "multipart/form-data; boundary=gqboundary"}
    with api_server.http("bob") as http:
        # Chunked (no Content-Length): counted while it streams, refused past the limit.
        r = http.post("/v1/files", content=multipart(3 * UPLOAD_LIMIT), headers=headers)
        assert r.status_code == 413, r.text
        assert "upload limit" in r.json()["error"]["message"]
        # A declared Content-Length over the limit is refused before the body is read.
        body = b"".join(multipart(2 * UPLOAD_LIMIT))
        r = http.post("/v1/files", content=body, headers=headers)
        assert r.status_code == 413, r.text
        del body
        # Just under the limit is accepted.
        ok = http.post("/v1/files", content=multipart(UPLOAD_LIMIT - 1000), headers=headers)
        assert ok.status_code == 200, ok.text
        assert ok.json()["bytes"] == UPLOAD_LIMIT - 1000
    after = rss_mb(api_server.api_pid)
    growth = after - before
    refused = 3 * UPLOAD_LIMIT >> 20
    print(f"API server RSS {before:.0f} MB -> {after:.0f} MB around a {refused} MB refused upload")
    assert growth < UPLOAD_LIMIT / 2**20 / 2, (before, after)
    # The refused uploads left no file behind; the accepted one is there.
    files_after = sum(len(f) for _, _, f in os.walk(api_server.env["GENQUEUE_FILES_DIR"]))
    assert files_after == files_before + 1


def test_a_file_over_the_line_limit_is_refused(api_server: ApiServer) -> None:
    client = api_server.openai("bob")
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=("many.jsonl", b"{}\n" * (LINES_LIMIT + 1)), purpose="batch")
    assert err.value.status_code == 413
    assert "GENQUEUE_API_MAX_FILE_LINES" in err.value.message
    ok = client.files.create(file=("many.jsonl", b"{}\n" * LINES_LIMIT), purpose="batch")
    assert ok.bytes == 3 * LINES_LIMIT
    # A last line without its newline is a line too.
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=("many.jsonl", b"{}\n" * LINES_LIMIT + b"{}"), purpose="batch")
    assert err.value.status_code == 413


def test_a_json_body_is_capped_and_read_with_the_input_bounds(api_server: ApiServer) -> None:
    records = [{"prompt": "p" * 1000} for _ in range(UPLOAD_LIMIT // 1000 + 10)]
    with api_server.http("bob") as http:
        # Over the cap (the upload limit here): refused as it streams in, nothing stored.
        r = http.post("/v1/jobs", json={"model": "gpt2", "records": records})
        assert r.status_code == 413, r.text[:500]
        assert "upload the records as a file" in r.json()["error"]["message"]
        # Nested past the limit: a 400 that says so (the server stays up).
        deep = '{"a": ' * 5000 + "{}" + "}" * 5000
        text = '{"model": "gpt2", "records": [{"prompt": "x"}], "metadata": ' + deep
        r = http.post("/v1/jobs", content=text + "}", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "GENQUEUE_MAX_NESTING_DEPTH" in r.text, r.text[:500]
        # Metadata within JSON's depth but past a record's: refused on the field.
        meta: dict[str, object] = {"leaf": 1}
        for _ in range(100):
            meta = {"a": meta}
        r = http.post(
            "/v1/jobs", json={"model": "gpt2", "records": [{"prompt": "x"}], "metadata": meta}
        )
        assert r.status_code == 400 and "'metadata'" in r.json()["error"]["message"], r.text
        r = http.post(
            "/v1/jobs",
            json={"model": "gpt2", "records": [{"prompt": "x"}], "metadata": {"k": "v" * 70000}},
        )
        assert r.status_code == 400 and "metadata" in r.json()["error"]["message"], r.text
        # An unpaired surrogate in a record: the line-numbered problem an upload gets.
        r = http.post(
            "/v1/jobs",
            content=b'{"model": "gpt2", "records": [{"prompt": "ok"}, {"prompt": "a\\ud800b"}]}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400, r.text
        problems = r.json()["error"]["details"]["problems"]
        assert [p["line"] for p in problems] == [2] and "surrogate" in problems[0]["message"]
        assert http.get("/v1/jobs?limit=1").status_code == 200


def test_a_control_body_over_its_cap_is_refused_without_growing_memory(
    api_server: ApiServer,
) -> None:
    """POST /v1/batches and the retry route take a few fields: a body of many MB is a
    413 as it streams in (chunked) or from its Content-Length, never parsed whole."""
    from genqueue.api.uploads import MAX_CONTROL_BYTES

    pad = b"x" * (1 << 20)

    def big(total_mb: int) -> Iterator[bytes]:
        yield b'{"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "metadata": {"a": "'
        for _ in range(total_mb):
            yield pad
        yield b'"}}'

    before = rss_mb(api_server.api_pid)
    json_type = {"Content-Type": "application/json"}
    with api_server.http("bob") as http:
        r = http.post("/v1/batches", content=big(200), headers=json_type)
        assert r.status_code == 413, r.text
        message = r.json()["error"]["message"]
        assert f"over {MAX_CONTROL_BYTES} bytes" in message and "POST /v1/batches" in message
        body = b"".join(big(3))
        r = http.post("/v1/jobs/nope/retry", content=body, headers=json_type)
        assert r.status_code == 413 and "POST /v1/jobs/nope/retry" in r.text
        # The connection still serves the next request, and a small body is read as before.
        r = http.post("/v1/batches", json={"input_file_id": "file-x"})
        assert r.status_code == 400 and "endpoint" in r.text, r.text
    growth = rss_mb(api_server.api_pid) - before
    assert growth < 50, growth
