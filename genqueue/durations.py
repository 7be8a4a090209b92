"""Durations as people write them: `90s`, `30m`, `24h`, `2d` (deadlines, completion windows)."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta | None:
    """The duration `text` names, or None when it is not one."""
    m = _DURATION.fullmatch(text)
    if not m:
        return None
    return timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
