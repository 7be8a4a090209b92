"""Text as the SQL backends can store it."""

from __future__ import annotations


def clean_text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL (0x00); models (and inputs) can produce it. Drop it
    on every backend so results are the same on SQLite and PostgreSQL."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "")
