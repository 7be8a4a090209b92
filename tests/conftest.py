"""Shared fixtures: tiny real models (built offline) and real services.

Service fixtures skip locally when a service is absent but fail under CI (CI=true).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(models_dir: Path) -> Path:
    """A random-init GPT-2 (a few M params) with an offline-trained BPE tokenizer, saved
    with save_pretrained and loaded by tests through from_pretrained like a real model."""
    from genqueue.worker.tinymodels import ensure_tiny_model

    return ensure_tiny_model("tiny-gpt2", models_dir / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_t5_dir(models_dir: Path) -> Path:
    """A random-init T5 (encoder-decoder), built and saved like tiny_gpt2_dir."""
    from genqueue.worker.tinymodels import ensure_tiny_model

    return ensure_tiny_model("tiny-t5", models_dir / "tiny-t5")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep GENQUEUE_HOME (built models, embedded state) out of the user's cache."""
    home = os.environ.get("GENQUEUE_TEST_HOME")
    if home is None:
        home = str(tmp_path_factory.getbasetemp() / "genqueue-home")
        os.environ["GENQUEUE_TEST_HOME"] = home
    monkeypatch.setenv("GENQUEUE_HOME", home)
    yield
