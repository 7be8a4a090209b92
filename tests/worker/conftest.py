"""Worker test fixtures: loaded engines on the tiny models, one torch thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from genqueue.worker.engines import load_engine
from genqueue.worker.engines.hf import HFEngine
from genqueue.workeropts import WorkerOptions


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core runner
    spinning OpenMP threads slow them down badly; restored for other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _hf(model_dir: Path) -> Iterator[HFEngine]:
    engine = load_engine(WorkerOptions(model=str(model_dir), engine="hf"))
    assert isinstance(engine, HFEngine)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir: Path) -> Iterator[HFEngine]:
    yield from _hf(tiny_gpt2_dir)


@pytest.fixture(scope="module")
def t5(tiny_t5_dir: Path) -> Iterator[HFEngine]:
    yield from _hf(tiny_t5_dir)
