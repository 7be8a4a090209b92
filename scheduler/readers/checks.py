"""Bounds on one parsed record: nesting depth, characters per text field, and text that
cannot be stored (NUL characters, unpaired UTF-16 surrogates). Shared by every reader, so a
record is held to the same limits whatever format it came in."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterator
from typing import Any

from genqueue.settings import InputLimits

#: Code points that are half of a UTF-16 pair: JSON can write them alone ("\ud800"), and
#: no database can store them.
_SURROGATE = re.compile("[\ud800-\udfff]")


def record_problem(
    record: dict[str, Any], limits: InputLimits, *, text_checks: bool = True
) -> str | None:
    """What is wrong with a record's values, or None. `text_checks=False` skips looking
    for NUL characters and surrogates where the reader has ruled them out already."""
    max_chars = limits.max_field_chars
    for key, value in record.items():
        field = str(key)
        if text_checks or len(field) > max_chars:
            problem = text_problem(field, field, limits, text_checks=text_checks)
            if problem is not None:
                return problem
        if isinstance(value, str):  # the common case, checked here without a walk
            if len(value) <= max_chars and not text_checks:
                continue
            problem = text_problem(value, field, limits, text_checks=text_checks)
        elif isinstance(value, dict | list | bytes | bytearray):
            problem = value_problem(value, field, limits, text_checks=text_checks)
        else:
            continue
        if problem is not None:
            return problem
    return None


def value_problem(
    value: Any, field: str, limits: InputLimits, *, text_checks: bool = True
) -> str | None:
    """What is wrong with one field's value, or None. Walks without recursion, holding
    one iterator per level: memory grows with the depth (bounded), not the width."""
    if not isinstance(value, dict | list):
        return _leaf_problem(value, field, limits, text_checks)
    if limits.max_nesting_depth <= 1:
        return f"field {field!r}: {too_deep_message(limits)}"
    stack: list[Iterator[Any]] = [_children(value)]
    while stack:
        for child in stack[-1]:
            if isinstance(child, dict | list):
                if len(stack) + 1 >= limits.max_nesting_depth:
                    return f"field {field!r}: {too_deep_message(limits)}"
                stack.append(_children(child))
                break
            problem = _leaf_problem(child, field, limits, text_checks)
            if problem is not None:
                return problem
        else:
            stack.pop()
    return None


def _children(value: dict[Any, Any] | list[Any]) -> Iterator[Any]:
    """A container's members (an object's keys too: they are text)."""
    if isinstance(value, dict):
        return itertools.chain.from_iterable(value.items())
    return iter(value)


def _leaf_problem(value: Any, field: str, limits: InputLimits, text_checks: bool) -> str | None:
    if isinstance(value, str):
        return text_problem(value, field, limits, text_checks=text_checks)
    if isinstance(value, bytes | bytearray) and len(value) > limits.max_field_chars:
        return (
            f"field {field!r} holds {len(value):,} bytes; at most "
            f"{limits.max_field_chars:,} are allowed (GENQUEUE_MAX_FIELD_CHARS)"
        )
    return None


def text_problem(
    value: str, field: str, limits: InputLimits, *, text_checks: bool = True
) -> str | None:
    if len(value) > limits.max_field_chars:
        return (
            f"field {field!r} is {len(value):,} characters long; at most "
            f"{limits.max_field_chars:,} are allowed (GENQUEUE_MAX_FIELD_CHARS)"
        )
    if not text_checks:
        return None
    if "\x00" in value:
        return (
            f"field {field!r} contains a NUL character (\\u0000), which cannot be stored; remove it"
        )
    bad = _SURROGATE.search(value)
    if bad is not None:
        return (
            f"field {field!r} contains an unpaired UTF-16 surrogate "
            f"(\\u{ord(bad.group()):04x} at character {bad.start() + 1}), which is not text; "
            "write the character itself, or a complete surrogate pair"
        )
    return None


def too_deep_message(limits: InputLimits) -> str:
    return (
        f"the record nests objects or arrays more than {limits.max_nesting_depth} levels "
        "deep (GENQUEUE_MAX_NESTING_DEPTH)"
    )


def record_too_large(
    size: int, limits: InputLimits, *, what: str = "line", more: bool = False
) -> str:
    """`more`: reading stopped at `size`, the record is longer."""
    return (
        f"{what} is {'more than ' if more else ''}{size:,} bytes; at most "
        f"{limits.max_record_bytes:,} are allowed (GENQUEUE_MAX_RECORD_BYTES); it was not "
        "read into memory"
    )


def load_json(text: str, limits: InputLimits) -> Any:
    """json.loads for untrusted text: finite numbers only, nesting bounded. Raises
    json.JSONDecodeError for bad syntax and ValueError, with a message for the user, for
    the rest (too deep, NaN/Infinity, numbers too large). The caller checks the value
    (record_problem / value_problem)."""
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise ValueError(too_deep_message(limits)) from None
    except ValueError as exc:  # a hook's refusal, or an integer with too many digits
        message = str(exc)
        if "integer string conversion" in message:
            message = "an integer has too many digits (more than 4300); write a smaller number"
        raise ValueError(message) from None
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number; write a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError(f"the number {shown} is too large to represent; write a smaller one")
    return value


#: One decoder for every line (json.loads with hooks would build one per call).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def too_many_values(count: int, limits: InputLimits, *, what: str = "values") -> str:
    return (
        f"the record holds more than {limits.max_record_values:,} {what} ({count:,} "
        "separators); at most that many are allowed (GENQUEUE_MAX_RECORD_VALUES)"
    )
