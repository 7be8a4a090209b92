"""The engine interface: what a worker needs from a loaded model.

An engine owns one loaded model and turns a micro-batch of requests that share decoding
params into results. Batching policy (token budget, out-of-memory backoff, isolating a
failing item) lives in `genqueue.worker.batching`, above the engines, so every engine
gets it for free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from genqueue.params import GenerationParams


@dataclass(frozen=True)
class GenRequest:
    """One item to generate for. `key` is the item index; `seed` is the item's own seed
    (derived from the job seed and the item), so sampling does not depend on batching.

    A chat item carries `messages` (its `prompt` is then only a plain-text view): the
    engine renders them with `chat_template`, or the model's own. `token_ids`, once
    set (by the batching layer, from `Engine.tokenize`), is the prompt as the model
    sees it, so nothing is tokenised twice."""

    key: int
    prompt: str
    params: GenerationParams
    seed: int | None = None
    messages: tuple[dict[str, str], ...] | None = None
    chat_template: str | None = None
    token_ids: tuple[int, ...] | None = None


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
    #: Per output: a constrained output cut before its grammar was complete.
    incomplete: list[bool] = field(default_factory=list)
    #: Per output, OpenAI-shaped log-probabilities ({"content": [...]}), with logprobs.
    logprobs: list[dict[str, Any]] | None = None
    #: {label: log-probability of the output being exactly that label}, score_choices.
    choice_scores: dict[str, float] | None = None


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


class PromptError(ValueError):
    """Raised by an engine when one request's prompt cannot be made into tokens (e.g. a
    conversation for a model without a chat template); that item fails with `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class OutOfMemory(Exception):
    """Raised by an engine when a micro-batch did not fit (CUDA OOM or the configured host
    memory budget); the batching layer halves the batch and retries."""


class Engine(Protocol):
    """A loaded model that generates for micro-batches of requests with equal params."""

    info: ModelInfo
    # Optional: `continuous_batch: int`, for an engine that batches continuously
    # itself (vLLM): requests per `generate` call, without a token budget (see
    # batching.for_engine). Without it, micro-batches follow the worker's settings.

    def tokenize(self, requests: Sequence[GenRequest]) -> list[list[int]]:
        """Each request's prompt as the token ids the model reads (a conversation
        rendered with its chat template first). Raises PromptError for a request
        that cannot be tokenised."""
        ...

    def fit(self, request: GenRequest, max_tokens: int) -> GenRequest:
        """The request cut to at most `max_tokens` prompt tokens (for `--truncate`): a
        prompt keeps the text the model needs most, a conversation drops its oldest
        turns. It may still be too long (the caller checks)."""
        ...

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Generate for all requests at once (they share `params` except the seed),
        from their `token_ids` when set. Raises `OutOfMemory` when the batch does not
        fit."""
        ...

    def close(self) -> None:
        """Release the model (and GPU memory)."""
        ...
