"""Constrained decoding for the torch engines: llguidance matchers as a logits mask.

Each row of a `generate` call (item x return sequence) gets its own matcher, or none,
so items with different constraints share one micro-batch. Grammars are compiled once
per engine (`GrammarCache`, keyed by the grammar text: once per job and params, not
once per item); each row starts from a copy of the compiled matcher. The mask runs
before the seeded sampler, so seeded sampling stays reproducible and independent of
the batch: a row's draws depend only on its own seed and its own masked scores.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor


class GrammarCache:
    """Compiled grammars of one tokenizer, most recently used kept (a bounded LRU)."""

    def __init__(self, tokenizer: Any, *, vocab_size: int, eos_ids: Iterable[int], size: int = 128):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = sorted(eos_ids)
        self.size = size
        self._llg_tokenizer: Any = None
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self.compiles = 0  # how many grammars were compiled (the tests check the cache)

    def llg_tokenizer(self) -> Any:
        """llguidance's view of the tokenizer (built once, ~ms for small vocabularies)."""
        if self._llg_tokenizer is None:
            import llguidance.hf

            self._llg_tokenizer = llguidance.hf.from_tokenizer(
                self.tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_ids[0]
            )
        return self._llg_tokenizer

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher for `grammar` (compiled on first use, then copied)."""
        import llguidance

        compiled = self._compiled.get(grammar)
        if compiled is None:
            compiled = llguidance.LLMatcher(self.llg_tokenizer(), grammar, log_level=0)
            if compiled.is_error():
                raise ValueError(f"the constraint does not compile: {compiled.get_error()}")
            self.compiles += 1
            self._compiled[grammar] = compiled
            if len(self._compiled) > self.size:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(grammar)
        return compiled.deep_copy()

    def accepts(self, grammar: str, ids: Sequence[int]) -> bool:
        """Whether `ids` (without EOS) is a complete output of `grammar`."""
        m = self.matcher(grammar)
        return bool(m.consume_tokens(list(ids))) and not m.is_error() and m.is_accepting()

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (what OpenAI's `bytes` lists)."""
        try:
            return bytes(self.llg_tokenizer().decode_bytes([token_id]))
        except Exception:  # a slow tokenizer llguidance cannot wrap: decode the text
            text = self.tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            return str(text).encode()


class GrammarMask(LogitsProcessor):
    """Masks every token a row's grammar does not allow next (rows without a matcher
    pass through). Consumes each row's previous token first; a row that ended (EOS)
    or whose grammar is complete may only end."""

    def __init__(self, matchers: Sequence[Any | None], eos_ids: Iterable[int]) -> None:
        self.matchers: list[Any] = list(matchers)
        self.eos_ids = sorted(eos_ids)
        self.rows = [r for r, m in enumerate(self.matchers) if m is not None]
        self.done = [False] * len(self.matchers)
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.rows:
            return scores
        if scores.shape[0] != len(self.matchers):
            raise RuntimeError(f"GrammarMask got {scores.shape[0]} rows for {len(self.matchers)}")
        if self.steps:
            last = input_ids[:, -1].tolist()
            for r in self.rows:
                if self.done[r]:
                    continue
                m = self.matchers[r]
                if last[r] in self.eos_ids or m.is_stopped():
                    self.done[r] = True
                else:
                    m.consume_token(int(last[r]))
        self.steps += 1
        vocab = scores.shape[-1]
        words = (vocab + 31) // 32
        mask = np.zeros((len(self.rows), words), dtype=np.uint32)
        for i, r in enumerate(self.rows):
            m = self.matchers[r]
            if self.done[r] or m.is_error():
                for eos in self.eos_ids:  # only the end is left
                    mask[i, eos // 32] |= np.uint32(1 << (eos % 32))
                continue
            row = np.frombuffer(m.compute_bitmask(), dtype=np.uint32)
            n = min(words, row.shape[0])
            mask[i, :n] = row[:n]
        allowed = np.unpackbits(mask.view(np.uint8), axis=1, bitorder="little")[:, :vocab]
        blocked = torch.from_numpy(allowed == 0).to(scores.device)
        index = torch.tensor(self.rows, device=scores.device)
        sub = scores.index_select(0, index).masked_fill(blocked, float("-inf"))
        out = scores.clone()
        out.index_copy_(0, index, sub)
        return out  # type: ignore[return-value]


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the tokens generated so far:
    logit[t] -= presence * (count[t] > 0) + frequency * count[t]."""

    def __init__(self, start: int, *, presence: float, frequency: float) -> None:
        self.start = start
        self.presence = presence
        self.frequency = frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.start :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        penalty = self.frequency * counts + self.presence * (counts > 0).to(scores.dtype)
        return scores - penalty  # type: ignore[return-value]
