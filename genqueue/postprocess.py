"""Post-processing: named steps applied to each output after generation.

`--postprocess trim,sentences:2` runs the steps left to right on every output; the
result line shows the processed text and SQL keeps the raw generation too
(`raw_output`). `STEPS` is the one list of steps: params validation, the CLI help and
the README's table come from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    name: str
    help: str
    #: Whether the step takes a number (`sentences:2`).
    takes_number: bool = False


STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("trim", "remove leading and trailing whitespace"),
        Step("first_line", "keep the first non-empty line"),
        Step("sentences", "keep the first N sentences (sentences:N, N >= 1)", True),
        Step("dedupe_sentences", "drop every sentence that repeats an earlier one"),
        Step(
            "collapse_loops",
            "collapse a word sequence (1 to 8 words) repeated 3 or more times in a row "
            "into one occurrence: degenerate n-gram loops",
        ),
    )
}


def check_steps(steps: tuple[str, ...]) -> tuple[str, ...]:
    """The steps, validated: raises ValueError naming an unknown step or a bad number."""
    for spec in steps:
        name, _, arg = spec.partition(":")
        step = STEPS.get(name)
        if step is None:
            raise ValueError(f"unknown post-processing step {spec!r} (steps: {', '.join(STEPS)})")
        if step.takes_number:
            if not arg.isdigit() or int(arg) < 1:
                raise ValueError(f"step {name} needs a number >= 1, e.g. {name}:2")
        elif arg:
            raise ValueError(f"step {name} takes no argument (got {spec!r})")
    return steps


def apply(steps: tuple[str, ...], text: str) -> str:
    """`text` after each step, in order."""
    for spec in steps:
        name, _, arg = spec.partition(":")
        text = _FUNCTIONS[name](text, int(arg) if arg else 0)
    return text


# A sentence ends at . ! or ? (possibly repeated, possibly closed by a quote or bracket)
# followed by whitespace or the end, or at a line break. A dot inside a word or a number
# (4.5, example.com, v1.2) ends nothing.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)|\n")


def split_sentences(text: str) -> list[str]:
    """Sentences with their own trailing punctuation (whitespace between them dropped);
    joined again, they hold every non-space character of `text`."""
    out = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        part = text[start : m.end()].strip()
        if part:
            out.append(part)
        start = m.end()
    rest = text[start:].strip()
    if rest:
        out.append(rest)
    return out


def _trim(text: str, _: int) -> str:
    return text.strip()


def _first_line(text: str, _: int) -> str:
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


def _sentences(text: str, n: int) -> str:
    return " ".join(split_sentences(text)[:n])


def _dedupe_sentences(text: str, _: int) -> str:
    seen: set[str] = set()
    kept = []
    for sentence in split_sentences(text):
        key = " ".join(sentence.lower().rstrip(".!?\"')]").split())
        if key not in seen:
            seen.add(key)
            kept.append(sentence)
    return " ".join(kept)


def _collapse_loops(text: str, _: int) -> str:
    words = text.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        step = 0  # words consumed by a loop starting at i
        for n in range(1, min(8, len(words) - i) + 1):
            unit = words[i : i + n]
            reps = 1
            while words[i + reps * n : i + (reps + 1) * n] == unit:
                reps += 1
            if reps >= 3:
                out.extend(unit)
                step = reps * n
                break
        if step:
            i += step
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)


_FUNCTIONS: dict[str, Callable[[str, int], str]] = {
    "trim": _trim,
    "first_line": _first_line,
    "sentences": _sentences,
    "dedupe_sentences": _dedupe_sentences,
    "collapse_loops": _collapse_loops,
}
