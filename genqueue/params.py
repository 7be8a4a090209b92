"""Generation parameters: one validated model shared by the scheduler and the workers.

Job-level params are validated at submission; per-item overrides (a record's `params`
field) are validated per line and merged over the job's. Errors name the field and the
allowed range, so a user can fix the input without reading code.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: Hard ceiling for max_new_tokens when the model's own limit is unknown at submission.
MAX_NEW_TOKENS_CEILING = 32768


class GenerationParams(BaseModel):
    """Decoding parameters, with the ranges transformers accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS_CEILING)
    min_new_tokens: int = Field(0, ge=0, le=MAX_NEW_TOKENS_CEILING)
    temperature: float = Field(1.0, gt=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=1_000_000)  # 0 = disabled
    num_beams: int = Field(1, ge=1, le=64)
    num_return_sequences: int = Field(1, ge=1, le=64)
    repetition_penalty: float = Field(1.0, gt=0.0, le=100.0)
    no_repeat_ngram_size: int = Field(0, ge=0, le=1024)
    do_sample: bool = False
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: tuple[str, ...] = Field((), max_length=16)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens "
                f"({self.max_new_tokens})"
            )
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) needs do_sample=true "
                f"or num_beams >= num_return_sequences (num_beams is {self.num_beams})"
            )
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        return self

    def merged(self, overrides: dict[str, Any] | None) -> GenerationParams:
        """These params with an item's overrides applied (validated again)."""
        if not overrides:
            return self
        return GenerationParams.model_validate({**self.model_dump(), **overrides})

    def batch_key(self) -> tuple[Any, ...]:
        """Items whose params share this key can be generated in one batch (the seed is
        per item, so it is not part of the key)."""
        return tuple(v for k, v in self.model_dump().items() if k != "seed")


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line per problem: `field: message (got value)`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "params"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(GenerationParams.model_fields)
            msg = f"unknown parameter (allowed: {allowed})"
        got = err.get("input")
        shown = f" (got {got!r})" if got is not None and err["type"] != "extra_forbidden" else ""
        parts.append(f"{loc}: {msg}{shown}")
    return "; ".join(parts)
