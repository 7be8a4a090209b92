"""An unexpected exception in a route: a generic JSON 500 (no traceback), logged, and the
keep-alive connection stays usable for the client's next request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx2 as httpx
import pytest
import uvicorn
from fastapi import FastAPI

from genqueue.api import errors
from tests.services import free_port


@pytest.fixture
def failing_app() -> Iterator[str]:
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    def boom() -> dict[str, str]:
        raise RuntimeError("secret internals")

    @app.get("/ok")
    def ok() -> dict[str, str]:
        return {"ok": "yes"}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_a_500_keeps_the_connection_open(
    failing_app: str, caplog: pytest.LogCaptureFixture
) -> None:
    with httpx.Client(base_url=failing_app, transport=httpx.HTTPTransport(retries=0)) as http:
        for _ in range(3):
            r = http.get("/boom")
            assert r.status_code == 500
            error = r.json()["error"]
            assert error["code"] == "server_error" and "secret" not in r.text
            # The same connection answers the next request.
            assert http.get("/ok").json() == {"ok": "yes"}
    assert "secret internals" in caplog.text
