"""An engine without a model: it echoes the rendered prompt.

It exists to measure the pipeline's own overhead (queue, storage, batching) and to check
prompt templates end to end without loading weights. It never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from genqueue.worker.engines.base import GenRequest, GenResult, ModelInfo
from genqueue.workeropts import WorkerOptions

_WORD = re.compile(r"\S+")


class DryRunEngine:
    """Output = the prompt's first `max_new_tokens` whitespace-separated words."""

    def __init__(self, options: WorkerOptions) -> None:
        self.info = ModelInfo(
            model_ref=options.model,
            revision=options.revision,
            engine="dry-run",
            is_encoder_decoder=False,
            max_context=None,
            device="cpu",
            dtype="none",
        )

    def tokenize(self, requests: Sequence[GenRequest]) -> list[list[int]]:
        """Whitespace-separated words stand in for tokens (of a conversation: of its
        plain-text view)."""
        return [list(range(len(r.prompt.split()))) for r in requests]

    def fit(self, request: GenRequest, max_tokens: int) -> GenRequest:
        """The prompt's last `max_tokens` words."""
        return replace(request, prompt=self.truncate(request.prompt, max_tokens))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Whitespace-separated words stand in for tokens."""
        return [len(t.split()) for t in texts]

    def truncate(self, text: str, max_tokens: int) -> str:
        """The last `max_tokens` words (what a decoder-only model would keep)."""
        words = text.split()
        return " ".join(words[-max_tokens:]) if max_tokens > 0 else ""

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Echo each prompt verbatim: cut at the first stop string ("stop"), else after
        max_new_tokens words ("length"); a prompt that ends first finishes with "stop"."""
        results = []
        for req in requests:
            params = req.params
            text, reason = req.prompt, "stop"
            hits = [pos for s in params.stop if (pos := text.find(s)) >= 0]
            if hits:
                text = text[: min(hits)]
            words = list(_WORD.finditer(text))
            if len(words) > params.max_new_tokens:
                text, reason = text[: words[params.max_new_tokens - 1].end()], "length"
                words = words[: params.max_new_tokens]
            res = GenResult(key=req.key, prompt_tokens=len(req.prompt.split()))
            for _ in range(params.num_return_sequences):
                res.outputs.append(text)
                res.finish_reasons.append(reason)
                res.completion_tokens += len(words)
            results.append(res)
        return results

    def close(self) -> None:
        """Nothing to release."""
