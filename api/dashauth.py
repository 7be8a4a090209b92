"""The dashboard's sessions: a login form takes an API key (the same keys as the API)
and keeps it in an HttpOnly, SameSite=Strict cookie; every request authenticates it
again, so a revoked key logs its sessions out at once.

Cookie-authenticated POSTs (cancel, retry, logout) are CSRF-safe twice over: the
browser never sends a SameSite=Strict cookie on another site's request, and each form
carries a token (an HMAC of the session under a per-server secret) that another site
cannot read; a POST whose Origin or Sec-Fetch-Site names another site is refused too."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import Response

from genqueue.api.deps import ApiContext
from genqueue.storage import tenants
from genqueue.storage.models import DEFAULT_TENANT
from genqueue.storage.tenants import Principal

COOKIE = "gq_session"
#: A session lasts this long in the browser (the key itself decides how long it works).
COOKIE_MAX_AGE = 7 * 24 * 3600
#: The form field that carries the CSRF token.
CSRF_FIELD = "csrf"

_SECRET = secrets.token_bytes(32)


class LoginRequired(Exception):
    """Raised when a dashboard page is asked for without a valid session."""


class CsrfRefused(Exception):
    """Raised for a cookie-authenticated POST without the page's token or from
    another site."""


def session_key(request: Request) -> str:
    return request.cookies.get(COOKIE, "")


def session_principal(ctx: ApiContext, request: Request) -> Principal:
    """The principal of the request's session. A server with no key at all (it listens
    on loopback only) serves everyone as the default tenant, like the API."""
    key = session_key(request)
    if key:
        found = tenants.authenticate(ctx.store, key)
        if found is not None:
            return found
    if not tenants.any_key(ctx.store):
        return Principal(DEFAULT_TENANT)
    raise LoginRequired()


def csrf_token(request: Request) -> str:
    """The token this session's forms carry: an HMAC of the session's key (stable across
    restarts and replicas, unknowable without the key), or, on a server without keys,
    of this process's own secret."""
    key = session_key(request)
    if key:
        secret = hashlib.sha256(key.encode()).digest()
        return hmac.new(secret, b"genqueue-dashboard-csrf", hashlib.sha256).hexdigest()
    return hmac.new(_SECRET, b"genqueue-dashboard-csrf", hashlib.sha256).hexdigest()


def _same_origin(request: Request) -> bool:
    """False when the browser says the request came from another site (Sec-Fetch-Site,
    or an Origin whose host is not this one); requests without either header (not from
    a browser page) pass, the token still decides."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")}
    return urlsplit(origin).netloc in hosts - {""}


def check_post(request: Request, token: str | None) -> None:
    """Refuse a POST that did not come from one of this session's own pages."""
    if not _same_origin(request):
        raise CsrfRefused("the request came from another site")
    if not token or not hmac.compare_digest(token, csrf_token(request)):
        raise CsrfRefused("the form's token is missing or stale: reload the page and try again")


def check_origin(request: Request) -> None:
    """The login form's check (it has no session yet, so no token)."""
    if not _same_origin(request):
        raise CsrfRefused("the request came from another site")


def set_session(response: Response, request: Request, key: str) -> None:
    response.set_cookie(
        COOKIE,
        key,
        max_age=COOKIE_MAX_AGE,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def clear_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
