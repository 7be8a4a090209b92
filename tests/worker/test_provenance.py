"""A local model's revision names its contents, and is cached by size and mtime."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from genqueue.worker.provenance import local_revision


def flip_a_weight_byte(model_dir: Path) -> None:
    """Change one byte of the weights, keeping the file's size (and its mtime)."""
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # in the tensor data, past the header
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_two_checkpoints_of_one_shape_get_different_revisions(
    tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_gpt2_dir, a)
    shutil.copytree(tiny_gpt2_dir, b)
    cache = tmp_path / "revisions.json"
    assert local_revision(a, cache=cache) == local_revision(b, cache=cache)  # same bytes
    flip_a_weight_byte(b)
    os.utime(b / "model.safetensors")  # a new mtime, as a real rewrite has
    rev_a, rev_b = local_revision(a, cache=cache), local_revision(b, cache=cache)
    assert rev_a != rev_b and rev_a.startswith("local-") and len(rev_b) == len("local-") + 12


def test_the_digest_is_cached_under_size_and_mtime(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_gpt2_dir, model)
    cache = tmp_path / "revisions.json"
    first = local_revision(model, cache=cache)
    assert str(model.resolve()) in cache.read_text()
    flip_a_weight_byte(model)  # same size and mtime: the cached digest is trusted
    assert local_revision(model, cache=cache) == first
    os.utime(model / "model.safetensors")  # a new mtime: hashed again
    assert local_revision(model, cache=cache) != first
