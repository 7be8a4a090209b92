"""Receiving request bodies. A multipart upload is a stream: the file part goes to disk
chunk by chunk, its bytes and lines counted on the way, and an upload over the limit is
refused (413) as soon as it is, without ever being held in memory. Other form fields are
small text values, kept in memory up to a small cap. A JSON body (`read_json`) is held
in memory, so it is capped lower, and parsed with the input readers' bounds."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fastapi import Request
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from genqueue.api.errors import BadRequest, PayloadTooLarge, error_response
from genqueue.scheduler.readers.checks import load_json
from genqueue.settings import InputLimits

#: A form field other than the file (purpose, a job spec) is at most this long.
MAX_FIELD_BYTES = 1 << 20
#: A JSON body (a job spec with inline records) is at most this long, or the upload
#: limit when that is lower; larger inputs go as a file.
MAX_JSON_BYTES = 64 << 20
#: Room for the multipart framing and small fields on top of the file itself.
FRAMING_SLACK = 2 << 20
#: Any other request's body (a batch to create, a retry, a login form) is at most this
#: long: those bodies are a few fields, and FastAPI holds them in memory whole.
MAX_CONTROL_BYTES = 1 << 20
#: The routes that take inputs, each with its own streaming cap (`receive`, `read_json`).
INPUT_ROUTES = frozenset({("POST", "/v1/files"), ("POST", "/v1/jobs")})


class CapBodies:
    """ASGI middleware: a request body to any route but INPUT_ROUTES is refused (413)
    past MAX_CONTROL_BYTES: at once from Content-Length, else as it streams in, before
    the route's parser has held more than that in memory."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = (scope.get("method"), str(scope.get("path", "")).rstrip("/"))
        if scope["type"] != "http" or route in INPUT_ROUTES:
            await self.app(scope, receive, send)
            return

        def refusal() -> Any:
            return error_response(
                PayloadTooLarge(
                    f"the request body is over {MAX_CONTROL_BYTES} bytes, the most "
                    f"{route[0]} {route[1]} takes; only POST /v1/files and POST /v1/jobs "
                    "carry inputs"
                )
            )

        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_CONTROL_BYTES:
            await refusal()(scope, receive, send)
            return
        seen = 0
        answered = False

        async def counted() -> Any:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_CONTROL_BYTES and not answered:
                    answered = True
                    await refusal()(scope, receive, send)
                    # The route sees the client gone, and whatever it answers is dropped.
                    return {"type": "http.disconnect"}
            return message

        async def unless_answered(message: Any) -> None:
            if not answered:
                await send(message)

        await self.app(scope, counted, unless_answered)


@dataclass
class Upload:
    """What a multipart request held: its text fields, and its file on disk."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    lines: int = 0


class _Receiver:
    def __init__(self, target: Path, max_bytes: int, max_lines: int) -> None:
        self.target, self.max_bytes, self.max_lines = target, max_bytes, max_lines
        self.upload = Upload()
        self.out: IO[bytes] | None = None
        self._headers: dict[str, str] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self._last = b"\n"

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._name, self._is_file = {}, None, False
        self._value = bytearray()

    def _header_end(self) -> None:
        name = self._header_field.decode("latin-1").lower()
        self._headers[name] = self._header_value.decode("latin-1")
        self._header_field, self._header_value = bytearray(), bytearray()

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        raw_name = params.get(b"name")
        self._name = raw_name.decode() if raw_name else None
        filename = params.get(b"filename")
        if filename is not None and self._name == "file":
            if self.out is not None:
                raise BadRequest("send one file per upload (the `file` field)", param="file")
            self._is_file = True
            self.upload.filename = os.path.basename(filename.decode(errors="replace")) or "upload"
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.out = open(self.target, "wb")  # noqa: SIM115 (closed by receive)
            self.upload.path = self.target

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not chunk:
            return
        if not self._is_file:
            self._value.extend(chunk)
            if len(self._value) > MAX_FIELD_BYTES:
                raise BadRequest(f"form field {self._name!r} is over {MAX_FIELD_BYTES} bytes")
            return
        up = self.upload
        up.size += len(chunk)
        if up.size > self.max_bytes:
            raise PayloadTooLarge(
                f"the file is over the upload limit of {self.max_bytes} bytes "
                "(GENQUEUE_API_MAX_UPLOAD_BYTES); split it into several files"
            )
        up.lines += chunk.count(b"\n")
        self._last = chunk[-1:]
        self._check_lines()
        assert self.out is not None
        self.out.write(chunk)

    def _check_lines(self) -> None:
        if self.upload.lines > self.max_lines:
            raise PayloadTooLarge(
                f"the file has more than {self.max_lines} lines, the limit per file "
                "(GENQUEUE_API_MAX_FILE_LINES); split it into several files"
            )

    def _end(self) -> None:
        if self._is_file:
            if self.upload.size and self._last != b"\n":
                self.upload.lines += 1  # a last line without its newline
                self._check_lines()
            self._is_file = False
        elif self._name is not None:
            self.upload.fields[self._name] = self._value.decode(errors="replace")


async def receive(request: Request, target: Path, *, max_bytes: int, max_lines: int) -> Upload:
    """Stream a multipart/form-data request; its file part (field `file`) lands at
    `target`. Raises BadRequest or PayloadTooLarge (removing what was written)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise BadRequest("send the file as multipart/form-data (a `file` field)")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + FRAMING_SLACK:
        raise PayloadTooLarge(
            f"the upload is {declared} bytes, over the limit of {max_bytes} bytes "
            "(GENQUEUE_API_MAX_UPLOAD_BYTES); split it into several files"
        )
    receiver = _Receiver(target, max_bytes, max_lines)
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        _discard(receiver)
        raise BadRequest(f"the multipart body cannot be read: {exc}") from exc
    except BaseException:
        _discard(receiver)
        raise
    finally:
        if receiver.out is not None:
            receiver.out.close()
    return receiver.upload


async def read_json(request: Request, *, max_bytes: int, limits: InputLimits) -> Any:
    """A JSON request body, read up to min(`max_bytes`, MAX_JSON_BYTES) and parsed with
    the readers' bounds (nesting depth, finite numbers). Raises PayloadTooLarge past the
    cap (at once from Content-Length, else as it streams in) and BadRequest for a body
    that is not JSON."""
    cap = min(max_bytes, MAX_JSON_BYTES)
    too_large = PayloadTooLarge(
        f"the JSON body is over {cap} bytes, the most a JSON request may carry "
        "(the lower of 64 MiB and GENQUEUE_API_MAX_UPLOAD_BYTES); upload the records as "
        "a file (multipart: `spec` and `file`) instead"
    )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > cap:
            raise too_large
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the body is not UTF-8 (byte {exc.start + 1}); send JSON in UTF-8"
        ) from None
    try:
        return load_json(text, limits)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"the body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            "(or send multipart/form-data)"
        ) from None
    except ValueError as exc:
        raise BadRequest(f"the body cannot be read: {exc}") from None


def _discard(receiver: _Receiver) -> None:
    if receiver.out is not None:
        receiver.out.close()
    with contextlib.suppress(OSError):
        receiver.target.unlink(missing_ok=True)
