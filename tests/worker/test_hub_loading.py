"""Loading by hub id (from the local hub cache, offline): safetensors only, on the same
path a real `org/model` takes. Nothing is ever unpickled."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from genqueue.params import GenerationParams
from genqueue.worker.engines.base import GenRequest
from genqueue.worker.engines.hf import HFEngine

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"

LOAD = """
import sys
from genqueue.worker.engines import load_engine
from genqueue.workeropts import WorkerOptions
from genqueue.params import GenerationParams
from genqueue.worker.engines.base import GenRequest
engine = load_engine(WorkerOptions(model="gq-test/tiny", engine="hf", device="cpu"))
[res] = engine.generate([GenRequest(0, "The library", GenerationParams(max_new_tokens=6))])
print("OUTPUT", repr(res.outputs[0]))
"""


class Exploit:
    """Unpickling this creates a file: proof that weights were unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def hub_cache(root: Path, tiny: Path, *, safetensors: bool, marker: Path) -> Path:
    """A hub cache holding `gq-test/tiny` at one snapshot, as a download leaves it."""
    repo = root / "models--gq-test--tiny"
    snap = repo / "snapshots" / SNAPSHOT
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    for f in tiny.iterdir():
        if f.suffix != ".safetensors" or safetensors:
            shutil.copy(f, snap / f.name)
    (snap / "pytorch_model.bin").write_bytes(pickle.dumps(Exploit(marker)))
    return root


def load(cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("safetensors", [True, False])
def test_a_hub_model_loads_its_safetensors_and_never_its_pickles(
    gpt2: HFEngine, tiny_gpt2_dir: Path, tmp_path: Path, safetensors: bool
) -> None:
    marker = tmp_path / "unpickled"
    proc = load(hub_cache(tmp_path / "hub", tiny_gpt2_dir, safetensors=safetensors, marker=marker))
    if safetensors:
        assert proc.returncode == 0, proc.stderr[-3000:]
        [expected] = gpt2.generate(
            [GenRequest(0, "The library", GenerationParams(max_new_tokens=6))]
        )
        assert f"OUTPUT {expected.outputs[0]!r}" in proc.stdout  # the safetensors weights ran
    else:
        assert proc.returncode != 0
        assert "genqueue loads safetensors only" in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists()
