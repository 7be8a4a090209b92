"""Seeded sampling that does not depend on batching.

`model.generate(do_sample=True)` draws every row from one global RNG, so an item's output
changes with its neighbours in the batch. Instead each output row owns a
`torch.Generator` seeded from its item's seed; `SeededSampler` applies temperature,
top-k and top-p itself, draws one token per row from that row's generator, and masks
every other token, so `generate(do_sample=False)` (greedy) then picks the drawn token.
Imported only by the torch engines.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import cast

import torch
from transformers import LogitsProcessor

from genqueue.params import derive_seed


def seed_or_random(seed: int | None) -> int:
    """A request's seed (see genqueue.params.item_seed), or a fresh random one when it
    has none: its output is then not reproducible, which is what no seed means."""
    return seed if seed is not None else secrets.randbits(63)


def row_seeds(seeds: Sequence[int], num_return_sequences: int) -> list[int]:
    """Seeds of the expanded rows, in `generate`'s order: row r*k + j is sequence j of
    item r (k = num_return_sequences)."""
    return [derive_seed(s, j) for s in seeds for j in range(num_return_sequences)]


class SeededSampler(LogitsProcessor):
    """Samples one token per row from the row's own generator and returns scores that
    are -inf everywhere except that token. Must run last (after repetition penalty,
    min-new-tokens, n-gram blocking), which is where `generate` puts custom processors."""

    def __init__(
        self,
        seeds: Sequence[int],
        *,
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float = 0.0,
        typical_p: float = 1.0,
    ):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.min_p = min_p
        self.typical_p = typical_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(
                f"SeededSampler got {scores.shape[0]} rows for {len(self.generators)} seeds"
            )
        logits = filter_logits(
            scores.float() / self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            typical_p=self.typical_p,
        )
        probs = torch.softmax(logits, dim=-1)
        # Exponential race (equivalent to Gumbel-max): argmax(p / E), E ~ Exp(1). Each
        # row consumes exactly vocab-size draws per step from its own CPU generator, so
        # the stream never depends on the distribution, the device or the neighbours.
        noise = torch.stack(
            [torch.empty(probs.shape[-1]).exponential_(generator=g) for g in self.generators]
        ).to(probs.device)
        chosen = torch.argmax(probs / noise, dim=-1, keepdim=True)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, chosen, 0.0)
        return cast(torch.FloatTensor, out)


def filter_logits(
    logits: torch.Tensor,
    *,
    top_k: int,
    top_p: float,
    min_p: float = 0.0,
    typical_p: float = 1.0,
) -> torch.Tensor:
    """Top-k, nucleus (top-p), min-p then locally typical filtering, in transformers'
    order and with its semantics: removed tokens get -inf, and at least one token
    always survives."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -1:] = False  # keep the most likely token
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    if min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        floor = min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    if typical_p < 1.0:
        logits = _typical(logits, typical_p)
    return logits


def _typical(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling (Meister et al.), as transformers' TypicalLogitsWarper:
    keep the tokens whose surprise is closest to the entropy, up to `mass`."""
    normalized = torch.log_softmax(logits, dim=-1)
    p = torch.exp(normalized)
    entropy = -(normalized * p).nansum(-1, keepdim=True)
    shifted = torch.abs((-normalized) - entropy)
    sorted_scores, sorted_idx = torch.sort(shifted, descending=False)
    sorted_logits = logits.gather(-1, sorted_idx)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1).clamp(max=logits.shape[-1] - 1)
    remove_sorted = sorted_scores > sorted_scores.gather(1, last.view(-1, 1))
    remove_sorted[..., :1] = False
    remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
