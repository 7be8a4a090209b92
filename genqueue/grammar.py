"""Structured outputs: the grammar a job's constraint becomes, and its check at submission.

A constraint (`choices`, `regex`, `json_schema` or `json_object`) becomes one grammar
text for llguidance (https://github.com/guidance-ai/llguidance), which the worker
compiles once per grammar and tokenizer and enforces while decoding (a logits mask per
token). The same text is validated here, without a tokenizer and without torch, so an
unsupported schema keyword or a bad pattern is refused at submission, by name.

llguidance was chosen over xgrammar and outlines-core after measuring all three on the
tiny models (bench/RESULTS.md, "Structured outputs"): it imports in milliseconds without
torch (the scheduler can check grammars), installs without pulling triton, compiles a
JSON schema in under a millisecond, and names the schema keywords it does not implement.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

#: The constraint fields of GenerationParams, in the order their names are reported.
CONSTRAINT_FIELDS = ("choices", "regex", "json_schema", "json_object")


class GrammarError(ValueError):
    """Raised when a constraint cannot be compiled: names the field and what is wrong."""


def grammar_for(
    *,
    choices: tuple[str, ...] = (),
    regex: str | None = None,
    json_schema: dict[str, Any] | None = None,
    json_object: bool = False,
) -> str | None:
    """The llguidance grammar text of a constraint, None without one. Raises
    GrammarError for a constraint llguidance refuses (the message names the keyword)."""
    if choices:
        # A Lark grammar whose start rule is one of the labels, each a JSON string
        # literal, so any character in a label is matched literally.
        lark = "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
        return _checked("choices", _llg().LLMatcher.grammar_from_lark(lark))
    if regex is not None:
        return _checked("regex", _llg().LLMatcher.grammar_from_regex(regex))
    if json_schema is not None:
        try:
            text = _llg().LLMatcher.grammar_from_json_schema(
                json.dumps(json_schema), overrides={"whitespace_flexible": False}
            )
        except ValueError as exc:
            raise GrammarError(f"json_schema: {exc}") from None
        return _checked("json_schema", text)
    if json_object:
        return _checked(
            "json_object",
            _llg().LLMatcher.grammar_from_json_schema(
                json.dumps({"type": "object"}), overrides={"whitespace_flexible": False}
            ),
        )
    return None


@functools.lru_cache(maxsize=256)
def _validate(grammar: str) -> tuple[bool, tuple[str, ...]]:
    """llguidance's verdict on a grammar (cached: items repeat their job's grammar)."""
    is_error, messages = _llg().LLMatcher.validate_grammar_with_warnings(grammar, None)
    return bool(is_error), tuple(messages)


def _checked(field: str, grammar: str) -> str:
    _, messages = _validate(grammar)
    # llguidance compiles some schema features loosely and says so in a warning (an
    # unknown `format`, unimplemented keys): accepting them would let through outputs
    # that do not validate, so a warning refuses the constraint too.
    problems = [m for m in messages if m]
    if problems:
        raise GrammarError(f"{field}: {_explain(field, problems[0])}")
    return grammar


_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[(.*?)\]")


def _explain(field: str, message: str) -> str:
    """llguidance's message, with the unsupported keyword named plainly."""
    m = _UNIMPLEMENTED.search(message)
    if m:
        keys = ", ".join(k.strip().strip('"') for k in m.group(1).split(","))
        return (
            f"unsupported JSON Schema keyword(s): {keys}; remove them or express the "
            "constraint with the supported keywords (type, properties, required, enum, "
            "const, items, anyOf, oneOf, minimum/maximum, minLength/maxLength, pattern, ...)"
        )
    if message.startswith("Unknown format"):
        return f"unsupported JSON Schema {message[0].lower()}{message[1:]}; remove `format`"
    first = " ".join(message.split()) or "invalid"
    return f"cannot be compiled: {first}"


def _llg() -> Any:
    """llguidance, imported on first use (a few milliseconds, no torch)."""
    import llguidance

    return llguidance
