"""The root of every error genqueue raises on purpose.

Each package has its own root below it (`StorageError`, `SchedulerError`, `WorkerError`,
`CliError`), with sub-roots that name a kind of failure, so callers can catch one
family; the CLI prints any of them as one line (docs/architecture.md, "Errors").
"""

from __future__ import annotations

from typing import Any


class GenqueueError(Exception):
    """Raised for any failure genqueue reports to a user (the root of all its errors)."""


def type_name(value: Any) -> str:
    """JSON's name for a value's type: users write JSON, CSV or Parquet, not Python."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, bytes | bytearray):
        return "binary"
    return type(value).__name__
