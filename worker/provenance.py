"""What ran: a revision for a local model directory that identifies its contents.

Hub models have a commit hash. A local directory gets `local-` + a sha256 over the
contents of its weights and its config.json, so two checkpoints of the same shape get
different revisions. Hashing a large model takes a while, so the digest is
cached (in GENQUEUE_HOME) under each file's size and modification time: a restarted
worker re-hashes only what changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from genqueue.protocol import cache_dir

#: Besides the weights: the architecture they are loaded into.
_FILES = ("config.json",)
_CHUNK = 1 << 20


def _inputs(path: Path) -> list[Path]:
    weights = sorted(path.glob("*.safetensors"))
    return weights + [path / name for name in _FILES if (path / name).is_file()]


def local_revision(path: Path, *, cache: Path | None = None) -> str:
    """`local-` + the first 12 hex digits of the digest of the weights and config."""
    path = path.resolve()
    files = _inputs(path)
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache_file = cache or cache_dir() / "revisions.json"
    known = _load(cache_file)
    entry = known.get(str(path))
    if isinstance(entry, dict) and entry.get("files") == stamp:
        return str(entry["revision"])
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\n".encode())
        with open(f, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    revision = "local-" + digest.hexdigest()[:12]
    known[str(path)] = {"files": stamp, "revision": revision}
    _save(cache_file, known)
    return revision


def _load(cache_file: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(cache_file: Path, data: dict[str, Any]) -> None:
    """Write atomically (workers start together); a cache that cannot be written only
    costs a re-hash next time."""
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=".revisions-")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out)
            os.replace(tmp, cache_file)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
