"""Durations as people write them: `90s`, `30m`, `24h`, `2d` (deadlines, completion
windows), and deadlines as a duration or an ISO 8601 time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

#: The longest deadline or completion window: ten years, far inside what dates can hold.
MAX_DURATION = timedelta(days=3650)
_MAX_TEXT = f"{MAX_DURATION.days}d"


def parse_duration(text: str) -> timedelta | None:
    """The duration `text` names, or None when it is not one. Raises ValueError for one
    longer than MAX_DURATION."""
    m = _DURATION.fullmatch(text)
    if not m:
        return None
    seconds = float(m.group(1)) * _SECONDS[m.group(2)]
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{text.strip()!r} is longer than the longest allowed, {_MAX_TEXT}")
    return timedelta(seconds=seconds)


def parse_deadline(text: str | None) -> datetime | timedelta | None:
    """`90s`, `30m`, `24h`, `2d`, or an ISO 8601 time (UTC when it names no zone); None
    for none. Raises ValueError saying what is accepted."""
    if not text:
        return None
    duration = parse_duration(text)
    if duration is not None:
        if duration.total_seconds() <= 0:
            raise ValueError(f"{text.strip()!r} is no time at all; give a duration such as 30m")
        return duration
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 24h, 2d) nor an ISO time (2026-12-01T08:00:00Z)"
        ) from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when <= datetime.now(UTC):
        raise ValueError(f"{text!r} is in the past; give a later time, or a duration (24h)")
    if when - datetime.now(UTC) > MAX_DURATION:
        raise ValueError(f"{text!r} is further ahead than the longest allowed, {_MAX_TEXT}")
    return when
