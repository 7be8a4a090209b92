"""The native jobs API: submit (inline records or a file upload), list with a cursor,
status with usage, rate and ETA, streamed results in every format with a status filter,
cancel, retry, idempotency, and validation problems as a line-numbered 400."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.api.conftest import ApiServer
from tests.schemas import validate_line

pytestmark = pytest.mark.slow


def wait_job(http: Any, job_id: str, bound: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + bound
    while True:
        st = http.get(f"/v1/jobs/{job_id}").json()
        if st["state"] not in ("queued", "running"):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.3)


def test_submit_inline_records_follow_and_read_results(api_server: ApiServer) -> None:
    spec = {
        "model": "gpt2",
        "kind": "generate",
        "template": "Review: {review} Sentiment:",
        "params": {"max_new_tokens": 3},
        "records": [{"custom_id": f"r{i}", "review": f"good thing {i}"} for i in range(20)]
        + [{"custom_id": "long", "review": "word " * 700}],
    }
    with api_server.http("bob") as http:
        r = http.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "job-1"})
        assert r.status_code == 201, r.text
        job = r.json()
        again = http.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "job-1"}).json()
        assert again["job_id"] == job["job_id"]
        other = {**spec, "params": {"max_new_tokens": 5}}
        clash = http.post("/v1/jobs", json=other, headers={"Idempotency-Key": "job-1"})
        assert clash.status_code == 409, clash.text
        assert clash.json()["error"]["code"] == "idempotency_conflict"
        st = wait_job(http, job["job_id"])
        assert st["state"] == "completed_with_errors", st
        assert st["counts"]["succeeded"] == 20 and st["counts"]["failed"] == 1
        assert st["model"] == "gpt2" and st["tenant"] == "bob"
        assert st["usage"]["completion_tokens"] > 0 and st["items_per_second"] > 0
        assert st["eta_seconds"] == 0 and st["provenance"]["model_ref"].endswith("tiny-gpt2")

        lines = [
            json.loads(x) for x in http.get(f"/v1/jobs/{job['job_id']}/results").text.splitlines()
        ]
        assert [ln["custom_id"] for ln in lines] == [f"r{i}" for i in range(20)] + ["long"]
        for ln in lines:
            validate_line(ln)
        failed = http.get(f"/v1/jobs/{job['job_id']}/results", params={"status": "failed"})
        assert [json.loads(x)["custom_id"] for x in failed.text.splitlines()] == ["long"]
        rows = list(
            csv.DictReader(
                io.StringIO(http.get(f"/v1/jobs/{job['job_id']}/results?format=csv").text)
            )
        )
        assert len(rows) == 21 and rows[-1]["error_code"] == "prompt_too_long"
        table = pq.read_table(
            io.BytesIO(http.get(f"/v1/jobs/{job['job_id']}/results?format=parquet").content)
        )
        assert table.num_rows == 21
        oa = http.get(f"/v1/jobs/{job['job_id']}/results?format=openai").text.splitlines()
        assert json.loads(oa[0])["response"]["status_code"] == 200

        # Retry re-runs the failed item only (it fails again: still too long).
        retried = http.post(f"/v1/jobs/{job['job_id']}/retry", json={"statuses": ["failed"]})
        assert retried.status_code == 200 and retried.json()["requeued"] == 1
        assert wait_job(http, job["job_id"])["counts"]["succeeded"] == 20


def test_upload_a_csv_file_and_page_through_jobs(api_server: ApiServer) -> None:
    text = "custom_id,prompt\n" + "".join(f"c{i},hello {i}\n" for i in range(10))
    with api_server.http("carol") as http:
        ids = []
        for n in range(3):
            r = http.post(
                "/v1/jobs",
                files={"file": (f"in{n}.csv", text.encode())},
                data={"spec": json.dumps({"model": "gpt2", "params": {"max_new_tokens": 2}})},
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["job_id"])
        seen, after = [], None
        while True:
            page = http.get(
                "/v1/jobs", params={"limit": 2, **({"after": after} if after else {})}
            ).json()
            seen += [j["job_id"] for j in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert [i for i in seen if i in ids] == list(reversed(ids))
        for job_id in ids:
            assert wait_job(http, job_id)["state"] == "completed"


def test_cancel_a_running_job(api_server: ApiServer) -> None:
    records = [{"prompt": f"story {i}"} for i in range(800)]
    with api_server.http("dave") as http:
        job = http.post(
            "/v1/jobs", json={"model": "gpt2", "records": records, "params": {"max_new_tokens": 24}}
        ).json()
        r = http.post(f"/v1/jobs/{job['job_id']}/cancel")
        assert r.status_code == 200 and r.json()["cancel_requested"] is True
        st = wait_job(http, job["job_id"])
        assert st["state"] == "cancelled" and st["counts"]["cancelled"] > 0


def test_invalid_input_is_a_400_with_line_numbers(api_server: ApiServer) -> None:
    with api_server.http("bob") as http:
        r = http.post(
            "/v1/jobs",
            json={
                "model": "gpt2",
                "records": [{"prompt": "ok"}, {"text": "no prompt"}, {"prompt": ""}],
            },
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_input"
        assert [p["line"] for p in error["details"]["problems"]] == [2, 3]
        assert "line 2" in error["message"]
        r = http.post("/v1/jobs", json={"model": "llama-9000", "records": [{"prompt": "x"}]})
        assert r.status_code == 400 and "not offered" in r.json()["error"]["message"]
        r = http.post(
            "/v1/jobs", json={"model": "gpt2", "records": [{"prompt": "x"}], "params": {"top_p": 7}}
        )
        assert r.status_code == 400 and "top_p" in r.json()["error"]["message"]
        r = http.post("/v1/jobs", content=b"{nope", headers={"content-type": "application/json"})
        assert r.status_code == 400
        # Types are not coerced: a boolean priority is a mistake to report.
        r = http.post(
            "/v1/jobs", json={"model": "gpt2", "records": [{"prompt": "x"}], "priority": True}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "priority", r.text


def test_a_nul_character_in_a_url_is_a_400_that_says_where(api_server: ApiServer) -> None:
    # PostgreSQL refuses text holding NUL: no id, filter or cursor reaches it with one.
    with api_server.http("bob") as http:
        for url, param in (
            ("/v1/files?after=%C3%90w%00%C3%87&limit=5", "after"),
            ("/v1/batches?after=b%00", "after"),
            ("/v1/jobs?after=%00", "after"),
            ("/v1/files/file-%00", None),
            ("/v1/jobs/j%00b", None),
        ):
            r = http.get(url)
            assert r.status_code == 400, (url, r.text)
            error = r.json()["error"]
            assert error["code"] == "invalid_request" and "NUL" in error["message"], error
            assert error["param"] == param
        assert http.get("/v1/files?limit=5&purpose=batch").status_code == 200


def test_reuse_copies_identical_items_and_counts_them(api_server: ApiServer) -> None:
    records = [{"custom_id": f"q{i}", "prompt": f"reuse me {i}"} for i in range(3)]
    spec = {"model": "gpt2", "params": {"max_new_tokens": 3}, "records": records}
    with api_server.http("bob") as http:
        first = http.post("/v1/jobs", json=spec).json()["job_id"]
        assert wait_job(http, first)["reused"] == 0
        again = {**spec, "records": [*records[:2], {"prompt": "something new"}], "reuse": True}
        second = http.post("/v1/jobs", json=again).json()["job_id"]
        st = wait_job(http, second)
        assert st["state"] == "completed" and st["reused"] == 2, st
        lines = [json.loads(x) for x in http.get(f"/v1/jobs/{second}/results").text.splitlines()]
        for ln in lines:
            validate_line(ln)
        assert [ln.get("reused_from") for ln in lines] == [first, first, None]
