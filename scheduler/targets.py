"""Where a job's results go: the format a path asks for and whether it can be written.

Checked before any work starts (`genqueue run` checks -o before it starts a worker), so
this module imports nothing heavy; exports.py writes the results.
"""

from __future__ import annotations

import os
from pathlib import Path

from genqueue import formats
from genqueue.scheduler.errors import ExportError

#: The result formats, by name (see genqueue/formats.py).
EXPORT_FORMATS = formats.names("output")


def export_format(path: str, explicit: str | None = None, *, flag: str = "--format") -> str:
    """The format results are written in: `explicit`, else from the path's extension
    (stdout, "-", is JSONL). `flag` is the option that names a format, for the message."""
    if explicit:
        found = formats.by_name(explicit, "output")
        if found is None:
            raise ExportError(f"format: {explicit!r} is not one of {', '.join(EXPORT_FORMATS)}")
        return found.name
    if path == "-":
        return "jsonl"
    detected = formats.by_extension(Path(path).suffix, "output")
    if detected is None:
        raise ExportError(
            f"cannot tell the format of {path!r} from its extension; "
            f"use .jsonl, .csv or .parquet (or pass {flag})"
        )
    return detected.name


def check_targets(
    path: str, errors_path: str | None, *, what: str = "-o", errors_what: str = "--errors"
) -> None:
    """`check_target` for the results and the error file, and that they are not one."""
    check_target(path, what)
    if errors_path is None:
        return
    check_target(errors_path, errors_what)
    if errors_path == path or (
        path != "-" and Path(errors_path).absolute().resolve() == Path(path).absolute().resolve()
    ):
        raise ExportError(
            f"{what} and {errors_what} are the same file ({path!r}); give the error lines "
            "a file of their own"
        )


def check_target(path: str, what: str = "output") -> None:
    """Fail now, before any work, when results could not be written to `path` later:
    a directory, a read-only file, a folder that cannot be created or written to
    (missing folders are created when the results are written). The folder is tried
    with a probe file: permissions alone do not tell (/proc, a read-only mount)."""
    if path == "-":
        return
    target = Path(path).absolute()
    if target.is_dir():
        raise ExportError(f"{what} {path!r} is a directory; give a file name")
    if target.exists():
        if not os.access(target, os.W_OK):
            raise ExportError(f"{what} {path!r} is not writable")
        return
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ExportError(f"{what} {path!r}: {str(folder)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"{what} {path!r}: the folder {str(folder)!r} is not writable")
    probe = folder / f".{target.name}.probe-{os.getpid()}"
    try:
        probe.touch(exist_ok=False)
    except OSError as exc:
        raise ExportError(
            f"{what} {path!r}: cannot create a file in {str(folder)!r} ({exc.strerror})"
        ) from None
    probe.unlink(missing_ok=True)
