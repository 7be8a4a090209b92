"""Durations as people write them: `90s`, `30m`, `24h`, `2d` (deadlines, completion
windows), and deadlines as a duration or an ISO 8601 time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta | None:
    """The duration `text` names, or None when it is not one."""
    m = _DURATION.fullmatch(text)
    if not m:
        return None
    return timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})


def parse_deadline(text: str | None) -> datetime | timedelta | None:
    """`90s`, `30m`, `24h`, `2d`, or an ISO 8601 time (UTC when it names no zone); None
    for none. Raises ValueError saying what is accepted."""
    if not text:
        return None
    duration = parse_duration(text)
    if duration is not None:
        return duration
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 24h, 2d) nor an ISO time (2026-12-01T08:00:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
