"""Tenant isolation: every endpoint answers 404 for another tenant's ids (never 403),
missing, unknown and revoked keys get 401, an admin key sees every tenant, and the
`genqueue keys` commands manage the keys the server checks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import ApiServer, openai_line, wait_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def alices(api_server: ApiServer) -> dict[str, str]:
    """Ids that belong to tenant alice: a file, a batch and its output file, a job."""
    client = api_server.openai("alice")
    f = client.files.create(
        file=("mine.jsonl", (openai_line("a1", "gpt2") + "\n").encode()), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_batch(client, batch.id, until={"completed"})
    with api_server.http("alice") as http:
        job = http.post(
            "/v1/jobs",
            json={"model": "gpt2", "records": [{"prompt": "hi"}], "params": {"max_new_tokens": 2}},
        )
        assert job.status_code == 201, job.text
    return {
        "file": f.id,
        "batch": batch.id,
        "output": batch.output_file_id or "",
        "job": job.json()["job_id"],
    }


def requests_on(ids: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every endpoint that takes an id, called on alice's ids."""
    f, b, o, j = ids["file"], ids["batch"], ids["output"], ids["job"]
    return [
        ("GET", f"/v1/files/{f}", {}),
        ("GET", f"/v1/files/{f}/content", {}),
        ("DELETE", f"/v1/files/{f}", {}),
        ("GET", f"/v1/files/{o}", {}),
        ("GET", f"/v1/files/{o}/content", {}),
        ("GET", f"/v1/files?after={f}", {}),
        ("GET", f"/v1/batches/{b}", {}),
        ("POST", f"/v1/batches/{b}/cancel", {}),
        ("GET", f"/v1/batches?after={b}", {}),
        (
            "POST",
            "/v1/batches",
            {
                "json": {
                    "input_file_id": f,
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                }
            },
        ),
        ("GET", f"/v1/jobs/{j}", {}),
        ("GET", f"/v1/jobs/{j}/results", {}),
        ("POST", f"/v1/jobs/{j}/cancel", {}),
        ("POST", f"/v1/jobs/{j}/retry", {}),
        ("GET", f"/v1/jobs?after={j}", {}),
        ("GET", f"/v1/jobs/{b}", {}),
    ]


def test_another_tenants_ids_are_not_found(api_server: ApiServer, alices: dict[str, str]) -> None:
    with api_server.http("bob") as bob:
        for method, path, kw in requests_on(alices):
            r = bob.request(method, path, **kw)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            error = r.json()["error"]
            assert error["code"] == "not_found" and error["message"], error
            assert "Traceback" not in r.text
        # Nothing of alice's shows in bob's lists.
        assert alices["file"] not in [x["id"] for x in bob.get("/v1/files").json()["data"]]
        assert alices["batch"] not in [x["id"] for x in bob.get("/v1/batches").json()["data"]]
        assert alices["job"] not in [x["job_id"] for x in bob.get("/v1/jobs").json()["data"]]
    with api_server.http("alice") as alice:  # the same requests work for their owner
        assert alice.get(f"/v1/files/{alices['file']}").status_code == 200
        assert alice.get(f"/v1/files/{alices['output']}/content").status_code == 200
        assert alice.get(f"/v1/jobs/{alices['job']}").status_code == 200


def test_an_admin_key_sees_every_tenant(api_server: ApiServer, alices: dict[str, str]) -> None:
    with api_server.http("ops-admin") as admin:
        assert admin.get(f"/v1/batches/{alices['batch']}").json()["id"] == alices["batch"]
        assert admin.get(f"/v1/jobs/{alices['job']}").json()["tenant"] == "alice"
        listed = [x["id"] for x in admin.get("/v1/files", params={"limit": 10000}).json()["data"]]
        assert alices["file"] in listed


def test_missing_unknown_and_revoked_keys_get_401(
    api_server: ApiServer, alices: dict[str, str]
) -> None:
    with api_server.http(None) as anonymous:
        r = anonymous.get(f"/v1/batches/{alices['batch']}")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = anonymous.get("/v1/files", headers={"Authorization": "Bearer gq-not-a-key"})
        assert r.status_code == 401
    made = json.loads(api_server.gq("keys", "create", "--tenant", "erin", "--json").stdout)
    assert made["key"].startswith("gq-") and made["tenant"] == "erin"
    api_server.keys["erin"] = made["key"]
    with api_server.http("erin") as erin:
        assert erin.get("/v1/files").status_code == 200
        listed = json.loads(api_server.gq("keys", "list", "--json").stdout)
        assert {k["id"]: k for k in listed}[made["id"]]["revoked_at"] is None
        assert made["key"] not in api_server.gq("keys", "list").stdout  # only hashes stored
        api_server.gq("keys", "revoke", made["id"])
        r = erin.get("/v1/files")
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    with pytest.raises(Exception) as err:
        api_server.openai("erin").files.list()
    assert "401" in str(err.value) or "revoked" in str(err.value)
