"""Schema fuzzing: schemathesis generates requests for every operation of the server's
own /openapi.json; no answer is a 5xx, and every answer matches the document (status
code, content type, body schema). Bounded: a few examples per operation."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import ApiServer

pytestmark = pytest.mark.slow

#: Examples per operation: enough to reach the error paths, small enough for ~1 minute.
EXAMPLES = int(os.environ.get("GENQUEUE_TEST_FUZZ_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def api_schema(api_server: ApiServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(api_server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_within_its_schema(
    case: schemathesis.Case, api_server: ApiServer
) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {api_server.keys['fuzz']}"},
        checks=[
            schemathesis.checks.not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=30,
    )


def test_the_document_and_the_interactive_docs_are_served(api_server: ApiServer) -> None:
    with api_server.http(None) as http:
        doc = http.get("/openapi.json").json()
        assert http.get("/docs").status_code == 200
    for path in (
        "/v1/files",
        "/v1/files/{file_id}/content",
        "/v1/batches/{batch_id}/cancel",
        "/v1/models",
        "/v1/jobs",
        "/v1/jobs/{job_id}/results",
        "/v1/jobs/{job_id}/retry",
    ):
        assert path in doc["paths"], path
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
