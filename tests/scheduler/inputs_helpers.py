"""Input test helpers: records as bytes and files, read back as items or problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genqueue.scheduler.errors import LineProblem
from genqueue.scheduler.inputs import ParsedItem, read_items
from genqueue.scheduler.kinds import JobInputSpec

GENERATE = JobInputSpec(kind="generate")
SUMMARIZE = JobInputSpec(kind="summarize")


def jsonl(*records: Any) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def items(source: Any, spec: JobInputSpec = GENERATE, **kw: Any) -> list[ParsedItem | LineProblem]:
    return list(read_items(source, spec, **kw))


def problems(results: list[ParsedItem | LineProblem]) -> dict[int, str]:
    return {r.line: r.message for r in results if isinstance(r, LineProblem)}


def good(results: list[ParsedItem | LineProblem]) -> list[ParsedItem]:
    return [r for r in results if isinstance(r, ParsedItem)]
