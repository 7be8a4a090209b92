"""A webhook receiver for tests: an http.server thread on 127.0.0.1 that records every
request and answers `fail_first` of them with 500 (or always, with `failing`)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    fail_first: int = 0
    failing: bool = False
    requests: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:  # concurrent requests: exactly fail_first fail
                    failed = sum(1 for r in receiver.requests if r.status >= 300)
                    bad = receiver.failing or failed < receiver.fail_first
                    status = 500 if bad else 200
                    receiver.requests.append(Received(self.path, headers, body, status))
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"no" if bad else b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def delivered(self) -> list[Received]:
        return [r for r in self.requests if r.status == 200]

    def wait(self, n: int, *, bound: float = 30, path: str | None = None) -> list[Received]:
        """The first `n` successful deliveries (to `path`, if given)."""
        deadline = time.monotonic() + bound
        while True:
            got = [r for r in self.delivered() if path is None or r.path == path]
            if len(got) >= n:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(got)} of {n} deliveries in {bound}s: {self.requests}")
            time.sleep(0.05)
