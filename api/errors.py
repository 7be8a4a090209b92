"""The API's errors, and the one place where every genqueue error becomes an HTTP status
and the body {"error": {"code", "message", "details", "type", "param"}} (both the native
API's shape and the one the `openai` package parses). Nothing ever answers with a
traceback: an unexpected exception is logged and answered with a generic 500."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from genqueue.errors import GenqueueError
from genqueue.scheduler.errors import IdempotencyConflict, InputError, SchedulerError
from genqueue.storage.errors import (
    ApiKeyNotFound,
    BatchNotFound,
    FileNotFound,
    JobNotFound,
    JobStateError,
    ModelNotOffered,
)
from genqueue.webhooks import WebhookUrlError

log = logging.getLogger("genqueue.api")


class ApiError(GenqueueError):
    """Raised for a request the API refuses (the root of the API's errors); carries its
    HTTP status, an error code and, where it applies, a Retry-After."""

    status = 400
    code = "invalid_request"
    type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        details: Any = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.param, self.details, self.retry_after = param, details, retry_after


class BadRequest(ApiError):
    """Raised for a malformed or unsupported request (400)."""


class Unauthorized(ApiError):
    """Raised when the API key is missing, unknown or revoked (401)."""

    status, code, type = 401, "invalid_api_key", "authentication_error"


class NotFound(ApiError):
    """Raised for an id that does not exist for this tenant (404; never 403)."""

    status, code, type = 404, "not_found", "invalid_request_error"


class PayloadTooLarge(ApiError):
    """Raised when an upload is over the size or line limit (413)."""

    status, code = 413, "payload_too_large"


class LimitReached(ApiError):
    """Raised when a tenant is at one of its limits (429, with Retry-After)."""

    status, code, type = 429, "rate_limit_exceeded", "rate_limit_error"


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None
    type: str
    param: str | None = None


class ErrorResponse(BaseModel):
    """Every error response's body."""

    error: ErrorBody


#: The error responses every route may answer (for the OpenAPI document).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (400, "Invalid request"),
        (401, "Missing, unknown or revoked API key"),
        (404, "No such id for this tenant"),
        (409, "An Idempotency-Key reused for another request"),
        (413, "Upload over the limit"),
        (429, "A tenant limit is reached"),
    )
}

_NOT_FOUND = (JobNotFound, BatchNotFound, FileNotFound, ApiKeyNotFound, ModelNotOffered)


def _body(
    status: int,
    code: str,
    message: str,
    *,
    kind: str = "invalid_request_error",
    details: Any = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    error = {"code": code, "message": message, "details": details, "type": kind, "param": param}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def error_response(exc: GenqueueError) -> JSONResponse:
    """The response for any error genqueue raises on purpose."""
    if isinstance(exc, ApiError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return _body(
            exc.status,
            exc.code,
            str(exc),
            kind=exc.type,
            details=exc.details,
            param=exc.param,
            headers=headers,
        )
    if isinstance(exc, JobNotFound):  # the storage message points to the CLI
        return _body(404, "not_found", f"no job {exc.job_id!r} (list jobs with GET /v1/jobs)")
    if isinstance(exc, BatchNotFound):
        return _body(
            404, "not_found", f"no batch {exc.batch_id!r} (list batches with GET /v1/batches)"
        )
    if isinstance(exc, _NOT_FOUND):
        return _body(404, "not_found", str(exc))
    if isinstance(exc, InputError):
        problems = [
            {"line": p.line, "message": p.message, "custom_id": p.custom_id} for p in exc.problems
        ]
        details = {"problems": problems, "total_problems": exc.total_problems}
        return _body(400, "invalid_input", str(exc), details=details)
    if isinstance(exc, WebhookUrlError):
        return _body(400, "invalid_request", str(exc), param=exc.field)
    if isinstance(exc, IdempotencyConflict):
        return _body(409, "idempotency_conflict", str(exc), param="Idempotency-Key")
    if isinstance(exc, JobStateError):
        return _body(400, "invalid_state", str(exc))
    if isinstance(exc, SchedulerError):
        return _body(400, "invalid_request", str(exc))
    # A storage or other failure that is not the caller's to fix.
    log.error("request failed: %s", exc)
    return _body(
        500, "server_error", "the server could not complete the request", kind="server_error"
    )


def nul_in_url(path: str, query: bytes) -> str | None:
    """What part of a request's URL holds a NUL character (%00), or None. No id, filter
    or cursor can hold one, and PostgreSQL refuses any text parameter that does."""
    if "\x00" in path:
        return "the path"
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return f"query parameter {name.replace(chr(0), '%00')!r}"
    return None


class RefuseNul:
    """ASGI middleware: a URL with a NUL character gets a 400 that says where, before
    any route could pass it to the database."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            where = nul_in_url(scope.get("path", ""), scope.get("query_string", b""))
            if where is not None:
                response = _body(
                    400,
                    "invalid_request",
                    f"{where} contains a NUL character (%00); remove it",
                    param=where.removeprefix("query parameter ").strip("'")
                    if where != "the path"
                    else None,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _unexpected_response() -> JSONResponse:
    return _body(
        500,
        "server_error",
        "the server hit an unexpected error; it is logged on the server",
        kind="server_error",
    )


class AnswerUnexpected:
    """ASGI middleware: an exception no handler took is logged with its traceback and
    answered with a generic 500, and the connection stays open. (Starlette's own
    catch-all answers too, but re-raises, and the server then drops the keep-alive
    connection: the client's next, unrelated request would fail.) Once a response has
    started, nothing can be answered: the exception goes on up."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            await _unexpected_response()(scope, receive, send)


def _problem(error: Any) -> dict[str, str]:
    """One request-validation problem in the body's terms: the field it is about ("" for
    the body as a whole) and what is wrong."""
    loc = tuple(error.get("loc", ()))
    where = loc[0] if loc else None
    if error["type"] == "json_invalid":
        # FastAPI's location is a character offset into the body, not a field.
        reason = (error.get("ctx") or {}).get("error", "")
        return {"field": "", "message": f"the body is not valid JSON ({reason or 'unreadable'})"}
    field = ".".join(str(p) for p in loc if p != "body")
    if where == "body" and not field:
        if error["type"] == "missing":
            return {"field": "", "message": "the request needs a JSON object as its body"}
        if error["type"] in ("model_attributes_type", "dict_type"):
            return {
                "field": "",
                "message": "the body must be a JSON object (Content-Type: application/json), "
                "not a form or a JSON array",
            }
    return {"field": field, "message": error["msg"]}


def install(app: FastAPI) -> None:
    """Register the handlers: genqueue errors, request validation, HTTP errors and a
    catch-all that logs the traceback and answers a generic 500 (AnswerUnexpected); and
    refuse URLs with a NUL character (RefuseNul)."""
    app.add_middleware(AnswerUnexpected)
    app.add_middleware(RefuseNul)

    @app.exception_handler(GenqueueError)
    async def _genqueue(_: Request, exc: GenqueueError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_problem(e) for e in exc.errors()]
        text = "; ".join(
            f"{p['field']}: {p['message']}" if p["field"] else p["message"] for p in problems[:10]
        )
        param = (problems[0]["field"] or None) if problems else None
        return _body(
            400, "invalid_request", f"invalid request: {text}", details=problems, param=param
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _body(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Reached only from outside AnswerUnexpected (another middleware's failure).
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _unexpected_response()
