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
from genqueue.settings import InputLimits

Source = str | os.PathLike[str] | BinaryIO
Record = dict[str, Any]
#: What a reader yields: (line, record), or (line, problem) for a record it cannot parse.
Records = Iterator[tuple[int, Record | LineProblem]]
Parser = Callable[[IO[bytes], str, InputLimits], Records]

#: Bytes read from the source at a time.
READ_CHUNK = 64 * 1024


class InputTooLarge(Exception):
    """Raised from inside a read once the input passes `max_input_bytes` (after gunzip);
    the reader turns it into a fatal problem at the line it was reading."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the input is larger than {limit:,} bytes (after decompression; "
            "GENQUEUE_MAX_INPUT_BYTES); split it into several jobs"
        )


class _Metered(io.RawIOBase):
    """A binary stream that counts what is read through it and refuses past a limit."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # Up to the limit exactly, so the reader sees every line before it; past it, a
        # read that still finds data raises.
        room = self._limit - self.count
        if room <= 0:
            if self._stream.read(1):
                raise InputTooLarge(self._limit)
            return 0
        if len(buffer) > room:
            buffer = memoryview(buffer)[:room]
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            n = int(readinto(buffer) or 0)
        else:
            data = self._stream.read(len(buffer))
            n = len(data)
            buffer[:n] = data
        self.count += n
        return n


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
def open_binary(source: Source, max_bytes: int | None = None) -> Iterator[IO[bytes]]:
    """The source as a binary stream, gunzipped when it starts with gzip's magic bytes
    (paths, and streams that can peek such as stdin), and reading at most `max_bytes`
    (InputTooLarge past them). Streams we did not open stay open."""
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
        if max_bytes is not None:
            stream = cast(IO[bytes], io.BufferedReader(_Metered(stream, max_bytes), READ_CHUNK))
        yield stream


def with_stream(source: Source, parse: Parser, limits: InputLimits) -> Records:
    """Open the source and run a parser over it; corrupt gzip data becomes an
    InputFormatError naming the file, and input past `max_input_bytes` a fatal problem
    at the line being read."""
    name = source_name(source)
    line = 0
    with open_binary(source, limits.max_input_bytes) as stream:
        try:
            for line, record in parse(stream, name, limits):
                yield line, record
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise InputFormatError(f"{name}: corrupt or truncated gzip data ({exc})") from exc
        except InputTooLarge as exc:
            yield line + 1, LineProblem(line + 1, str(exc), fatal=True)


def limit_records(records: Records, limits: InputLimits) -> Records:
    """At most `max_records` records (problems count too); the next is a fatal problem."""
    for count, (line, record) in enumerate(records, start=1):
        if count > limits.max_records:
            yield (
                line,
                LineProblem(
                    line,
                    f"the input has more than {limits.max_records:,} records "
                    "(GENQUEUE_MAX_RECORDS); split it into several jobs",
                    fatal=True,
                ),
            )
            return
        yield line, record
        if isinstance(record, LineProblem) and record.fatal:
            return
