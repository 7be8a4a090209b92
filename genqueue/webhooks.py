"""The webhook contract: what a webhook URL may be, the signing secret, and the
Standard Webhooks signature every event carries.

Headers: `webhook-id` (the event id, the same on every retry), `webhook-timestamp`
(Unix seconds of this attempt) and `webhook-signature` = `v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`, keyed with the base64-decoded part of the tenant's `whsec_…`
secret: what the `openai` package's `client.webhooks.unwrap(body, headers, secret=...)`
checks (and any Standard Webhooks library).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from genqueue.errors import GenqueueError

SECRET_PREFIX = "whsec_"
#: Longest webhook URL accepted.
MAX_URL_CHARS = 2048


class WebhookUrlError(GenqueueError):
    """Raised for a webhook URL that cannot be used; names the field it came from."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def check_url(url: str, *, field: str = "webhook_url") -> str:
    """`url` if it is an absolute http(s) URL with a host and no credentials, else
    WebhookUrlError saying what is wrong with `field`."""

    def bad(why: str) -> WebhookUrlError:
        return WebhookUrlError(f"{field}: {why}", field=field)

    if not isinstance(url, str) or not url.strip():
        raise bad("give an http:// or https:// URL")
    if len(url) > MAX_URL_CHARS:
        raise bad(f"the URL is longer than {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise bad("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise bad(f"scheme {parts.scheme or '(none)'!r} is not allowed; use http or https")
    if not parts.hostname:
        raise bad("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise bad(
            "credentials in the URL are not allowed (they would be stored and logged); "
            "check the webhook-signature header on the receiving side instead"
        )
    if port == 0:
        raise bad("port 0 is not a valid port")
    return url


def new_secret() -> str:
    """A fresh signing secret: `whsec_` and base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX) :])
    return secret.encode()


def signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    signed = f"{msg_id}.{timestamp}.{body}".encode()
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The headers of one delivery attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }
