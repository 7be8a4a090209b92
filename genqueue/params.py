"""Generation parameters: one validated model shared by the scheduler and the workers.

Job-level params are validated at submission; per-item overrides (a record's `params`
field) are validated per line and merged over the job's. Errors name the field and the
allowed range, so a user can fix the input without reading code.
"""

from __future__ import annotations

import hashlib
from typing import Any, Self

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

#: Hard ceiling for max_new_tokens when the model's own limit is unknown at submission.
MAX_NEW_TOKENS_CEILING = 32768


class GenerationParams(BaseModel):
    """Decoding parameters, with the ranges transformers accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(
        64, ge=1, le=MAX_NEW_TOKENS_CEILING, description="New tokens per output"
    )
    min_new_tokens: int = Field(
        0, ge=0, le=MAX_NEW_TOKENS_CEILING, description="At least this many new tokens"
    )
    temperature: float = Field(1.0, gt=0.0, le=100.0, description="Sampling temperature")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling")
    top_k: int = Field(0, ge=0, le=1_000_000, description="Top-k sampling, 0 = off")
    num_beams: int = Field(1, ge=1, le=64, description="Beam search width")
    num_return_sequences: int = Field(
        1, ge=1, le=64, description="Outputs per item (needs sampling or beams)"
    )
    repetition_penalty: float = Field(1.0, gt=0.0, le=100.0, description="1.0 = off")
    no_repeat_ngram_size: int = Field(
        0, ge=0, le=1024, description="Never repeat n-grams of this size, 0 = off"
    )
    do_sample: bool = Field(False, description="Sample instead of greedy decoding")
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Seed for sampling; each item's output is reproducible",
    )
    stop: tuple[str, ...] = Field((), max_length=16, description="Stop string (repeatable)")

    @field_validator(
        "max_new_tokens",
        "min_new_tokens",
        "temperature",
        "top_p",
        "top_k",
        "num_beams",
        "num_return_sequences",
        "repetition_penalty",
        "no_repeat_ngram_size",
        "seed",
        mode="before",
    )
    @classmethod
    def _not_boolean(cls, value: Any) -> Any:
        # pydantic's lax mode reads true as 1: `"max_new_tokens": true` would silently
        # generate one token. A boolean for a number is always a mistake in the input.
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        return value

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
    """One readable line per problem: `field: message (got value; allowed range)`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(GenerationParams.model_fields)
            parts.append(f"{loc}: unknown parameter (allowed: {allowed})")
            continue
        if not loc:
            # A cross-field check: its message names the fields; the whole input is noise.
            parts.append(msg.removeprefix("Value error, "))
            continue
        msg = msg.removeprefix("Value error, ")
        if err["type"] == "tuple_type":
            msg = "expected a list of strings"  # users write JSON arrays, not Python tuples
        notes = []
        got = err.get("input")
        if got is not None:
            shown = repr(got)
            notes.append(f"got {shown if len(shown) <= 60 else shown[:57] + '...'}")
        info = GenerationParams.model_fields.get(str(err["loc"][0]))
        allowed_range = field_range(str(err["loc"][0]), info) if info else ""
        if allowed_range:
            notes.append(f"allowed: {allowed_range}")
        parts.append(f"{loc}: {msg}" + (f" ({'; '.join(notes)})" if notes else ""))
    return "; ".join(parts)


def field_range(name: str, info: FieldInfo) -> str:
    """`0 < temperature <= 100` for a field with numeric bounds, "" otherwise."""
    low = high = ""
    for bound in info.metadata:
        if isinstance(bound, Ge):
            low = f"{_number(bound.ge)} <= "
        elif isinstance(bound, Gt):
            low = f"{_number(bound.gt)} < "
        elif isinstance(bound, Le):
            high = f" <= {_number(bound.le)}"
        elif isinstance(bound, Lt):
            high = f" < {_number(bound.lt)}"
    return f"{low}{name}{high}" if low or high else ""


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def item_seed(job_seed: int | None, own_seed: int | None, index: int) -> int | None:
    """The seed item `index` samples with: its own `params.seed` when it set one, else
    one derived from the job's seed and the index, so its output never depends on which
    batch, task or worker it lands in; None without either (not reproducible)."""
    if own_seed is not None:
        return own_seed
    if job_seed is None:
        return None
    return derive_seed(job_seed, index)


def derive_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sequence `index` of an item whose seed is `seed` (stable across
    processes and versions, unlike `hash()`)."""
    digest = hashlib.sha256(f"genqueue:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)
