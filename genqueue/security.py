"""Settings that must not reach production: services reachable over a network without
a password. Every long-running role checks them at start (`check_settings`), and the
message says what to set. `GENQUEUE_ALLOW_INSECURE=true` waives the check for a private
network the operator trusts (and for tests on their own network namespaces).

TLS is passed through as written: `rediss://` URLs (with `ssl_cert_reqs=required` and
`ssl_ca_certs=` in the query) for Redis, `sslmode=` (and `sslrootcert=`, `sslcert=`) in
the query of a PostgreSQL URL.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from genqueue.errors import GenqueueError
from genqueue.settings import Settings


class InsecureSettings(GenqueueError):
    """Raised when a role would start with a service open to the network without a
    password; the message says what to set."""


def is_loopback(host: str) -> bool:
    """`localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_local_host(host: str | None) -> bool:
    """Loopback, a Unix socket (a path), or no host at all (the driver's local default)."""
    return not host or host.startswith("/") or is_loopback(host)


def redis_problem(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme in ("unix", "redis+socket") or is_local_host(parts.hostname):
        return None
    if parts.password:
        return None
    return (
        f"the broker {parts.scheme}://{parts.hostname}:{parts.port or 6379} is reached over "
        "the network without a password: set one (Redis `requirepass` or an ACL user) and "
        "put it in GENQUEUE_BROKER_URL as redis://:PASSWORD@host:6379/0 (rediss:// for TLS)"
    )


def postgres_problem(url: str | None) -> str | None:
    if not url or not url.startswith(("postgresql", "postgres")):
        return None
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    hosts = query.get("host", []) or [parts.hostname or ""]
    if all(is_local_host(h) for h in hosts):
        return None
    if parts.password or "sslcert" in query or "password" in query:
        return None
    if os.environ.get("PGPASSWORD") or os.environ.get("PGPASSFILE"):
        return None
    if (Path.home() / ".pgpass").is_file():
        return None
    return (
        f"the database on {', '.join(hosts)} is reached over the network without a "
        "password: put it in GENQUEUE_DATABASE_URL (postgresql://user:PASSWORD@host/db, "
        "with ?sslmode=verify-full for TLS), or in PGPASSWORD or ~/.pgpass"
    )


def problems(settings: Settings) -> list[str]:
    found = [redis_problem(settings.broker_url), postgres_problem(settings.database_url)]
    return [p for p in found if p is not None]


def check_settings(settings: Settings, role: str) -> None:
    """Refuse to start `role` with an insecure setting (unless allow_insecure)."""
    if settings.allow_insecure:
        return
    found = problems(settings)
    if found:
        raise InsecureSettings(
            f"refusing to start the {role}: "
            + "; ".join(found)
            + " (GENQUEUE_ALLOW_INSECURE=true waives this on a network you trust)"
        )
