"""The dashboard: server-rendered pages at `/` (jobs and batches with live progress, a
job's page, the workers page) for people logged in with an API key.

Thin routes over api/dashviews.py (what a page shows) and api/dashauth.py (sessions,
CSRF). Cancel, retry and downloads call the very route functions of the native API
(api/jobs.py), so a tenant can do here exactly what its key can do there. No build
step and nothing from a CDN: the templates and the one small script ship in the package.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from genqueue.api import dashauth, dashviews, jobs
from genqueue.api.deps import ApiContext, Ctx
from genqueue.api.errors import error_response
from genqueue.errors import GenqueueError
from genqueue.storage import outbox, tenants
from genqueue.storage.tenants import Principal

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
#: The files /ui/static serves (nothing else is reachable there).
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
#: Security headers of every dashboard page: no inline script, no framing.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


def viewer(ctx: Ctx, request: Request) -> Principal:
    return dashauth.session_principal(ctx, request)


Viewer = Annotated[Principal, Depends(viewer)]
CsrfField = Annotated[str | None, Form(alias=dashauth.CSRF_FIELD)]


def render(
    request: Request,
    name: str,
    ctx: ApiContext,
    caller: Principal | None,
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    page = {
        "request": request,
        "caller": caller,
        "csrf": dashauth.csrf_token(request),
        "sessions": tenants.any_key(ctx.store),
        **values,
    }
    return templates.TemplateResponse(request, name, page, status_code=status, headers=HEADERS)


def failure(request: Request, ctx: ApiContext, caller: Principal, exc: GenqueueError) -> Response:
    """A genqueue error as a page, with the status and message the API would answer."""
    answer = error_response(exc)
    message = json.loads(bytes(answer.body))["error"]["message"]
    return render(request, "error.html", ctx, caller, status=answer.status_code, message=message)


@router.get("/login")
def login_form(request: Request, ctx: Ctx, next: str = "/") -> HTMLResponse:
    return render(request, "login.html", ctx, None, next=_local(next), message=None)


@router.post("/login")
def login(
    request: Request,
    ctx: Ctx,
    key: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    dashauth.check_origin(request)
    found = tenants.authenticate(ctx.store, key.strip()) if key.strip() else None
    if found is None:
        message = "enter an API key" if not key.strip() else "the API key is unknown or revoked"
        return render(
            request, "login.html", ctx, None, status=401, next=_local(next), message=message
        )
    response = RedirectResponse(_local(next), status_code=303)
    dashauth.set_session(response, request, key.strip())
    return response


@router.post("/logout")
def logout(request: Request, csrf: CsrfField = None) -> Response:
    dashauth.check_post(request, csrf)
    response = RedirectResponse("/login", status_code=303)
    dashauth.clear_session(response)
    return response


@router.get("/")
def index(
    request: Request,
    ctx: Ctx,
    caller: Viewer,
    state: Annotated[str | None, Query(max_length=32)] = None,
) -> HTMLResponse:
    """Jobs and batches with live progress, filtered by state."""
    if state not in dashviews.STATES:
        state = None
    return render(request, "jobs.html", ctx, caller, **dashviews.list_page(ctx, caller, state))


@router.get("/jobs/{job_id}")
def job_page(
    request: Request, ctx: Ctx, caller: Viewer, job_id: str, done: str | None = None
) -> Response:
    """A job's (or batch's) spec, provenance, counts, throughput, recent results and
    errors, with its actions and downloads."""
    try:
        found = jobs.jobs_of(ctx, caller, job_id)
    except GenqueueError as exc:
        return failure(request, ctx, caller, exc)
    if not found:
        return render(
            request,
            "error.html",
            ctx,
            caller,
            message=f"batch {job_id} has no jobs yet: its input is being validated, "
            "or it was refused (GET /v1/batches/{id} says why)",
        )
    page = dashviews.job_page(ctx, found, job_id)
    return render(
        request,
        "job.html",
        ctx,
        caller,
        job=page,
        done=done if done in ("cancel", "retry") else None,
        webhook_deliveries=webhook_deliveries(ctx, job_id),
    )


def webhook_deliveries(ctx: ApiContext, job_id: str) -> list[dict[str, Any]]:
    """The webhook events of a job (or batch) for the job page's "Webhook deliveries"
    section (api/templates/job.html): one row per delivery attempt, and one for an event
    not tried yet."""
    rows: list[dict[str, Any]] = []
    for ev in outbox.deliveries_for_job(ctx.store, job_id):
        event = {"event": ev["type"], "url": ev["url"], "state": ev["state"]}
        if not ev["attempts"]:
            rows.append(
                {
                    **event,
                    "attempt": "",
                    "at": ev["next_attempt_at"] or "",
                    "status": "",
                    "error": "",
                    "ms": "",
                }
            )
        for a in ev["attempts"]:
            rows.append(
                {
                    **event,
                    "attempt": a["attempt"],
                    "at": a["at"],
                    "status": a["status_code"] or "",
                    "error": a["error"] or "",
                    "ms": a["duration_ms"] if a["duration_ms"] is not None else "",
                }
            )
    return rows


@router.post("/jobs/{job_id}/cancel")
def cancel(
    request: Request, ctx: Ctx, caller: Viewer, job_id: str, csrf: CsrfField = None
) -> Response:
    dashauth.check_post(request, csrf)
    try:
        jobs.cancel_job(ctx, caller, job_id)
    except GenqueueError as exc:
        return failure(request, ctx, caller, exc)
    return RedirectResponse(f"/jobs/{quote(job_id)}?done=cancel", status_code=303)


@router.post("/jobs/{job_id}/retry")
def retry(
    request: Request, ctx: Ctx, caller: Viewer, job_id: str, csrf: CsrfField = None
) -> Response:
    dashauth.check_post(request, csrf)
    try:
        jobs.retry_job(ctx, caller, job_id, jobs.RetryBody())
    except GenqueueError as exc:
        return failure(request, ctx, caller, exc)
    return RedirectResponse(f"/jobs/{quote(job_id)}?done=retry", status_code=303)


@router.get("/jobs/{job_id}/download/{fmt}")
def download(
    request: Request, ctx: Ctx, caller: Viewer, job_id: str, fmt: jobs.ResultFormat
) -> Response:
    """The job's results as a file (what `GET /v1/jobs/{id}/results` streams)."""
    try:
        response: Response = jobs.job_results(ctx, caller, job_id, format=fmt)
    except GenqueueError as exc:
        return failure(request, ctx, caller, exc)
    suffix = "jsonl" if fmt == "openai" else fmt
    name = f"{job_id}.{'openai.' if fmt == 'openai' else ''}{suffix}"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@router.get("/workers")
def workers_page(request: Request, ctx: Ctx, caller: Viewer) -> HTMLResponse:
    """Live workers per model, what each works on, and the queues' depth."""
    return render(request, "workers.html", ctx, caller, **dashviews.workers_page(ctx, caller))


@router.get("/ui/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(
        (HERE / "static" / name).read_bytes(),
        media_type=STATIC[name],
        headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
    )


#: A path on this site: no scheme, no `//host`, no backslash or whitespace (browsers drop
#: tabs and newlines, so `/<TAB>/host` would become `//host`).
_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9/_.~%?=&+:@!$'()*,;-]*")


def _local(target: str) -> str:
    """A redirect target on this site only; anything else goes to `/`."""
    return target if _LOCAL_PATH.fullmatch(target) else "/"


def install(app: FastAPI) -> None:
    """Add the dashboard's routes and the handlers of its two refusals."""
    app.include_router(router)

    @app.exception_handler(dashauth.LoginRequired)
    async def _login(request: Request, _: dashauth.LoginRequired) -> Response:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            path = "/"
        return RedirectResponse(f"/login?next={quote(path, safe='')}", status_code=303)

    @app.exception_handler(dashauth.CsrfRefused)
    async def _csrf(_: Request, exc: dashauth.CsrfRefused) -> Response:
        return Response(
            f"refused: {exc}", status_code=403, media_type="text/plain", headers=HEADERS
        )
