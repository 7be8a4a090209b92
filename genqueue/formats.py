"""File formats, in and out: one table of names, aliases and extensions.

Input readers (scheduler/inputs.py) and result exports (scheduler/exports.py) both look
formats up here, so a name or an extension means the same thing in both directions.
Each caller raises its own error, listing `names(direction)`, when a lookup fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Direction = Literal["input", "output"]


@dataclass(frozen=True)
class Format:
    name: str
    #: File name endings that select this format (lower case, with the dot).
    extensions: tuple[str, ...]
    #: Other names accepted for `--format`.
    aliases: tuple[str, ...] = ()
    directions: tuple[Direction, ...] = ("input", "output")
    #: Whether it can be streamed to stdout / read from stdin.
    streams: bool = True


FORMATS: tuple[Format, ...] = (
    Format("jsonl", (".jsonl", ".json", ".ndjson"), aliases=("json", "ndjson")),
    Format("csv", (".csv",)),
    Format("parquet", (".parquet", ".pq"), aliases=("pq",), streams=False),
    # OpenAI batch lines: JSON Lines of {custom_id, method, url, body} in, and of
    # {id, custom_id, response, error} out. Chosen by name (input: also detected).
    Format("openai", (), aliases=("openai-batch",)),
)
#: What a gzip ending wraps (inputs only; Parquet compresses internally).
GZIP_SUFFIX = ".gz"


def names(direction: Direction) -> tuple[str, ...]:
    """The format names usable in `direction`, for messages and option help."""
    return tuple(f.name for f in FORMATS if direction in f.directions)


def by_name(name: str, direction: Direction) -> Format | None:
    """The format called `name` (or one of its aliases, any case), or None."""
    key = name.strip().lower()
    for fmt in FORMATS:
        if direction in fmt.directions and key in (fmt.name, *fmt.aliases):
            return fmt
    return None


def by_extension(suffix: str, direction: Direction) -> Format | None:
    """The format a file ending such as ".csv" selects, or None."""
    key = suffix.lower()
    for fmt in FORMATS:
        if direction in fmt.directions and key in fmt.extensions:
            return fmt
    return None


def by_path(path: str, direction: Direction) -> Format | None:
    """The format of a file name, a trailing ".gz" ignored; None when unknown."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == GZIP_SUFFIX:
        suffixes.pop()
    return by_extension(suffixes[-1], direction) if suffixes else None


def known_extension(path: str) -> bool:
    """Whether a (stream's) name ends in an extension this table knows (or ".gz")."""
    suffix = Path(path).suffix.lower()
    return suffix == GZIP_SUFFIX or any(suffix in f.extensions for f in FORMATS)
