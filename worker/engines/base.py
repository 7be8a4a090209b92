"""The engine interface: what a worker needs from a loaded model.

An engine owns one loaded model and turns a micro-batch of requests that share decoding
params into results. Batching policy (token budget, out-of-memory backoff, isolating a
failing item) lives in `genqueue.worker.batching`, above the engines, so every engine
gets it for free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from genqueue.params import GenerationParams


@dataclass(frozen=True)
class GenRequest:
    """One item to generate for. `key` is the item index; `seed` is the item's own seed
    (derived from the job seed and the item), so sampling does not depend on batching."""

    key: int
    prompt: str
    params: GenerationParams
    seed: int | None = None


@dataclass
class ItemError:
    """A per-item failure: a stable machine-readable code and a message saying what to do."""

    code: str
    message: str


@dataclass
class GenResult:
    key: int
    outputs: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)  # "stop" | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: bool = False
    error: ItemError | None = None


@dataclass(frozen=True)
class ModelInfo:
    """Provenance recorded with every attempt."""

    model_ref: str
    revision: str | None
    engine: str
    is_encoder_decoder: bool
    max_context: int | None  # prompt + new tokens the model can attend to; None = unknown
    device: str
    dtype: str


class OutOfMemory(Exception):
    """Raised by an engine when a micro-batch did not fit (CUDA OOM or the configured host
    memory budget); the batching layer halves the batch and retries."""


class Engine(Protocol):
    """A loaded model that generates for micro-batches of requests with equal params."""

    info: ModelInfo

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Prompt token counts, as the model's tokenizer sees them."""
        ...

    def truncate(self, text: str, max_tokens: int) -> str:
        """The prompt cut to its last `max_tokens` tokens (for `--truncate`)."""
        ...

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Generate for all requests at once (they share `params` except the seed).
        Raises `OutOfMemory` when the batch does not fit."""
        ...

    def close(self) -> None:
        """Release the model (and GPU memory)."""
        ...
