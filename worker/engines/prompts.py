"""Prompts as token ids, for transformers tokenizers: plain prompts, and conversations
rendered with a chat template, each tokenised exactly once; and cutting either to fit
a model's context (`--truncate`). Used by the hf and deepspeed engines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from genqueue.worker.engines.base import GenRequest, PromptError


class PromptCodec:
    def __init__(self, tokenizer: Any, *, encoder_decoder: bool) -> None:
        self.tokenizer = tokenizer
        self.encoder_decoder = encoder_decoder
        self._max_token_chars: int | None = None

    @property
    def max_token_chars(self) -> int | None:
        """Characters the longest vocabulary entry (special tokens included) stands for
        at most: no token covers more of a prompt. None when the vocabulary is unknown."""
        if self._max_token_chars is None:
            try:
                vocab = self.tokenizer.get_vocab()
                self._max_token_chars = max((len(str(t)) for t in vocab), default=0)
            except Exception:
                self._max_token_chars = 0
        return self._max_token_chars or None

    def tokenize(self, requests: Sequence[GenRequest]) -> list[list[int]]:
        """Token ids as the model reads them: plain prompts with the tokenizer's special
        tokens (in one call), conversations through the chat template with a generation
        prompt (the template adds any special tokens itself: none are added twice)."""
        plain = [r.prompt for r in requests if r.messages is None]
        plain_ids = iter(self.tokenizer(plain)["input_ids"] if plain else [])
        return [list(next(plain_ids)) if r.messages is None else self._render(r) for r in requests]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of plain prompts, special tokens included (e.g. T5's `</s>`)."""
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]

    def fit(self, request: GenRequest, max_tokens: int) -> GenRequest:
        """The request cut to at most `max_tokens` prompt tokens: a plain prompt by
        `truncate`; a conversation drops its oldest turns after any system message, but
        keeps its last one (then it may still be too long, and the caller fails it)."""
        if request.messages is None:
            return replace(request, prompt=self.truncate(request.prompt, max_tokens))
        messages = list(request.messages)
        head = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(head) :]
        while (
            len(turns) > 1
            and len(self._render(replace(request, messages=(*head, *turns)))) > max_tokens
        ):
            turns = turns[1:]
        return replace(request, messages=(*head, *turns))

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut a prompt to at most `max_tokens` tokens, at a token boundary of the original
        text. Decoder-only models keep the LAST tokens: the continuation depends on the
        most recent text, and instructions usually end the prompt. Seq2seq models keep the
        FIRST tokens: the encoder reads the whole input and task prefixes
        ("summarize: ", "translate ...: ") come first."""
        fast = bool(getattr(self.tokenizer, "is_fast", False))  # offsets need a fast one
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
        ids = enc["input_ids"]
        budget = max_tokens - self.tokenizer.num_special_tokens_to_add()
        while True:
            if budget <= 0:
                return ""
            keep = slice(None, budget) if self.encoder_decoder else slice(len(ids) - budget, None)
            if budget >= len(ids):
                cut = text
            elif fast:  # slice the original text, so whitespace and spelling survive intact
                spans = enc["offset_mapping"][keep]
                cut = text[: spans[-1][1]] if self.encoder_decoder else text[spans[0][0] :]
            else:
                cut = self.tokenizer.decode(ids[keep], skip_special_tokens=True)
            # Re-tokenising a cut string can merge differently; shrink until it fits.
            if self.count_tokens([cut])[0] <= max_tokens:
                return cut
            budget -= 1

    def _render(self, request: GenRequest) -> list[int]:
        template = request.chat_template
        if template is None and not getattr(self.tokenizer, "chat_template", None):
            raise PromptError(
                "no_chat_template",
                "the model has no chat template, so this conversation cannot be rendered; "
                "submit with --chat-template FILE (a Jinja template), or use a chat model",
            )
        try:
            ids = self.tokenizer.apply_chat_template(
                list(request.messages or ()),
                chat_template=template,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        except Exception as exc:  # a template error is this conversation's problem
            raise PromptError(
                "chat_template_error", f"the chat template failed: {type(exc).__name__}: {exc}"
            ) from exc
        return [int(i) for i in ids]


class PromptMethods:
    """The prompt half of the Engine protocol, for an engine whose prompts go through a
    PromptCodec (`self.prompts`): hf and vllm tokenise, fit and count alike."""

    prompts: PromptCodec

    @property
    def max_token_chars(self) -> int | None:
        """Characters one token stands for at most (see batching._bound)."""
        return self.prompts.max_token_chars

    def tokenize(self, requests: Sequence[GenRequest]) -> list[list[int]]:
        """See Engine.tokenize."""
        return self.prompts.tokenize(requests)

    def fit(self, request: GenRequest, max_tokens: int) -> GenRequest:
        """See Engine.fit."""
        return self.prompts.fit(request, max_tokens)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of plain prompts, special tokens included."""
        return self.prompts.count_tokens(texts)

    def truncate(self, text: str, max_tokens: int) -> str:
        """A plain prompt cut to at most `max_tokens` tokens (see PromptCodec.truncate)."""
        return self.prompts.truncate(text, max_tokens)
