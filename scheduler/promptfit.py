"""Prompts that cannot fit the model's context, found at submission without tokenising
megabytes: such an item fails at once with `prompt_too_long` and never reaches a worker.

A token never stands for more characters than the longest entry in the vocabulary, so a
prompt longer than (room + 1) x that many characters holds more tokens than the room
left by max_new_tokens. To be safe against normalisers that drop characters (runs of
spaces, for instance), the prompt's first that-many characters are tokenised (a few
kilobytes, with the `tokenizers` library: no torch) and the item fails only when they
alone are too many tokens. Everything in between is decided by the worker's exact count.
Only local models (and built tiny models) whose directory holds tokenizer.json and a
config.json with a context length can be checked here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genqueue.protocol import context_length
from genqueue.scheduler.planning import CHARS_PER_TOKEN

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejection:
    code: str
    message: str


class PromptFit:
    """Checks prompts against one model's context; the tokenizer is loaded only when a
    prompt is long enough to need it."""

    def __init__(self, model_dir: Path, context: int) -> None:
        self.model_dir = model_dir
        self.context = context
        self._tokenizer: Any = None
        self._max_token_chars = 0
        self._unusable = False

    @classmethod
    def for_model(cls, model_ref: str) -> PromptFit | None:
        """A checker for a local model directory, or None when nothing can be checked
        here (a hub id, no context length, no tokenizer.json)."""
        path = Path(model_ref)
        if not path.is_absolute() or not (path / "tokenizer.json").is_file():
            return None
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        context = context_length(config) if isinstance(config, dict) else None
        return cls(path, context) if context else None

    def check(self, text: str, max_new_tokens: int) -> Rejection | None:
        """Why the plain prompt `text` cannot fit with `max_new_tokens`, or None when it
        may."""
        room = self.context - max_new_tokens
        if room <= 0 or len(text) <= (room + 1) * CHARS_PER_TOKEN:
            return None  # cheap: most prompts end here, with no tokenizer loaded
        if not self._load():
            return None
        cap = (room + 1) * self._max_token_chars
        if len(text) <= cap:
            return None
        # Joining the cut's last token with what follows it may save one token at most.
        ids = self._tokenizer.encode(text[:cap], add_special_tokens=False).ids
        count = len(ids) - 1
        if count <= room:
            return None  # a normaliser shrank the text: the worker counts exactly
        return Rejection(
            "prompt_too_long",
            f"prompt has more than {count:,} tokens ({len(text):,} characters); with "
            f"max_new_tokens {max_new_tokens} it exceeds the model's context of "
            f"{self.context} tokens; shorten it, lower max_new_tokens, or submit with "
            "--truncate",
        )

    def _load(self) -> bool:
        if self._tokenizer is None and not self._unusable:
            try:
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
                vocab = tokenizer.get_vocab(with_added_tokens=True)
                self._max_token_chars = max((len(token) for token in vocab), default=0)
                self._tokenizer = tokenizer
            except Exception as exc:  # an unusual tokenizer: leave the decision to workers
                log.warning("cannot check prompt lengths for %s: %s", self.model_dir, exc)
                self._unusable = True
        return self._tokenizer is not None and self._max_token_chars > 0
