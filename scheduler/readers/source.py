"""Where input bytes come from: a path, stdin or a stream, gunzipped when it is gzip."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from genqueue import formats
from genqueue.scheduler.errors import InputFormatError, LineProblem

Source = str | os.PathLike[str] | BinaryIO
Record = dict[str, Any]
#: What a reader yields: (line, record), or (line, problem) for a record it cannot parse.
Records = Iterator[tuple[int, Record | LineProblem]]
Parser = Callable[[IO[bytes], str], Records]

_GZIP_MAGIC = b"\x1f\x8b"


def check_path(path: Path) -> None:
    if not path.exists():
        raise InputFormatError(f"input file not found: {path}")
    if path.is_dir():
        raise InputFormatError(f"{path} is a directory; give the input file inside it")
    if not os.access(path, os.R_OK):
        raise InputFormatError(f"cannot read {path}: permission denied")


def source_name(source: Source) -> str:
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        return "<stdin>" if path == "-" else path
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<stream>"


def detection_name(source: Source) -> str:
    """A stream's name only counts when it has a known extension (stdin's is "<stdin>")."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    name = getattr(source, "name", None)
    if isinstance(name, str) and formats.known_extension(name):
        return name
    return "-"


@contextlib.contextmanager
def open_binary(source: Source) -> Iterator[IO[bytes]]:
    """The source as a binary stream, gunzipped when it starts with gzip's magic bytes
    (paths, and streams that can peek such as stdin). Streams we did not open stay open."""
    with contextlib.ExitStack() as stack:
        stream: IO[bytes]
        if isinstance(source, str | os.PathLike):
            is_stdin = os.fspath(source) == "-"
            stream = sys.stdin.buffer if is_stdin else stack.enter_context(open(source, "rb"))
        elif isinstance(source, io.TextIOBase):
            # sys.stdin instead of sys.stdin.buffer: read the bytes underneath.
            buffer = getattr(source, "buffer", None)
            if buffer is None:
                raise InputFormatError("input stream must be binary (e.g. sys.stdin.buffer)")
            stream = buffer
        else:
            stream = source
        peek = getattr(stream, "peek", None)
        if callable(peek) and peek(2)[:2] == _GZIP_MAGIC:
            # GzipFile leaves the stream under it open when it closes.
            stream = cast(IO[bytes], stack.enter_context(gzip.GzipFile(fileobj=stream)))
        yield stream


def with_stream(source: Source, parse: Parser) -> Records:
    """Open the source and run a parser over it; corrupt gzip data becomes an
    InputFormatError naming the file."""
    name = source_name(source)
    with open_binary(source) as stream:
        try:
            yield from parse(stream, name)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise InputFormatError(f"{name}: corrupt or truncated gzip data ({exc})") from exc
