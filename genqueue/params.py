"""Generation parameters: one validated model shared by the scheduler and the workers.

Job-level params are validated at submission; per-item overrides (a record's `params`
field) are validated per line and merged over the job's. Errors name the field and the
allowed range, so a user can fix the input without reading code.
"""

from __future__ import annotations

import hashlib
import json
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

from genqueue import postprocess
from genqueue.errors import type_name
from genqueue.grammar import CONSTRAINT_FIELDS, GrammarError, grammar_for

#: Hard ceiling for max_new_tokens when the model's own limit is unknown at submission.
MAX_NEW_TOKENS_CEILING = 32768
#: The largest JSON schema accepted (as JSON text): compiling it is submission work.
MAX_SCHEMA_CHARS = 65536
#: Params that may differ between the rows of one generate call.
PER_ROW_FIELDS = frozenset({"seed", *CONSTRAINT_FIELDS, "score_choices", "postprocess"})
#: Params that bound a row's output length: an engine that ends each row at its own limit
#: (its `per_row_params`) batches items that differ in them (variable output lengths).
LENGTH_FIELDS = frozenset({"max_new_tokens", "stop"})


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
    min_p: float = Field(
        0.0, ge=0.0, le=1.0, description="Sampling: drop tokens below min_p x the top one's"
    )
    typical_p: float = Field(1.0, gt=0.0, le=1.0, description="Locally typical sampling")
    length_penalty: float = Field(
        1.0, ge=-10.0, le=10.0, description="Beam search: > 0 favours longer outputs"
    )
    early_stopping: bool = Field(
        False, description="Beam search: stop once num_beams candidates are finished"
    )
    presence_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="OpenAI's: minus this once a token has appeared"
    )
    frequency_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="OpenAI's: minus this times a token's count so far"
    )
    choices: tuple[str, ...] = Field(
        (), max_length=1024, description="The output is exactly one of these labels"
    )
    regex: str | None = Field(
        None, max_length=4096, description="The output fully matches this pattern"
    )
    json_schema: dict[str, Any] | None = Field(
        None, description="The output is JSON valid against this schema (file or inline JSON)"
    )
    json_object: bool = Field(False, description="The output is a JSON object")
    logprobs: bool = Field(False, description="Return each output token's log-probability")
    top_logprobs: int = Field(
        0, ge=0, le=20, description="With --logprobs: this many most likely alternatives"
    )
    score_choices: bool = Field(
        False, description="With --choice: every label's log-probability given the prompt"
    )
    postprocess: tuple[str, ...] = Field(
        (), max_length=16, description="Post-processing steps, comma-separated"
    )

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
        "min_p",
        "typical_p",
        "length_penalty",
        "presence_penalty",
        "frequency_penalty",
        "top_logprobs",
        mode="before",
    )
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        # pydantic's lax mode reads true as 1 and "5" as 5: `"max_new_tokens": true`
        # would silently generate one token. A boolean or a string for a number is
        # always a mistake in the input (JSON has numbers), so it is refused by name.
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        if isinstance(value, str):
            raise ValueError("expected a number, got a string")
        return value

    @field_validator(
        "do_sample", "early_stopping", "json_object", "logprobs", "score_choices", mode="before"
    )
    @classmethod
    def _a_boolean(cls, value: Any) -> Any:
        # Lax mode would read "false" or "no" as false and 1 as true; a switch is
        # given as JSON true or false.
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got a {type_name(value)}")
        return value

    @field_validator("postprocess", mode="before")
    @classmethod
    def _steps_list(cls, value: Any) -> Any:
        # "trim,sentences:2" (the CLI's form) or a list of step names.
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @field_validator("postprocess")
    @classmethod
    def _known_steps(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return postprocess.check_steps(value)

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
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        if self.logprobs and self.num_beams > 1:
            raise ValueError("logprobs cannot be combined with beam search (num_beams > 1)")
        self._check_constraint()
        return self

    def _check_constraint(self) -> None:
        """At most one constraint, compilable, and nothing that fights the grammar."""
        given = self.constraint_fields()
        if len(given) > 1:
            raise ValueError(f"give one of {', '.join(given)}: an output has one constraint")
        if any(c == "" for c in self.choices):
            raise ValueError("choices must be non-empty labels")
        if len(set(self.choices)) != len(self.choices):
            raise ValueError("choices has a label twice")
        if self.score_choices and not self.choices:
            raise ValueError("score_choices needs choices (the labels to score)")
        if self.json_schema is not None:
            size = len(json.dumps(self.json_schema))
            if size > MAX_SCHEMA_CHARS:
                raise ValueError(
                    f"json_schema is {size} characters as JSON; at most {MAX_SCHEMA_CHARS}"
                )
        if not given:
            return
        name = given[0]
        if self.num_beams > 1:
            raise ValueError(f"{name} cannot be combined with beam search (num_beams > 1)")
        if self.min_new_tokens:
            raise ValueError(
                f"{name} cannot be combined with min_new_tokens: the constraint "
                "decides where the output ends"
            )
        if self.stop:
            raise ValueError(
                f"{name} cannot be combined with stop strings: the constraint "
                "decides where the output ends"
            )
        try:
            self.grammar()
        except GrammarError as exc:
            raise ValueError(str(exc)) from None

    def constraint_fields(self) -> list[str]:
        """The structured-output fields set (at most one in valid params)."""
        return [name for name in CONSTRAINT_FIELDS if getattr(self, name) not in (None, (), False)]

    def grammar(self) -> str | None:
        """The grammar text of this output's constraint (genqueue.grammar), None without."""
        return grammar_for(
            choices=self.choices,
            regex=self.regex,
            json_schema=self.json_schema,
            json_object=self.json_object,
        )

    @property
    def wants_json(self) -> bool:
        """Whether outputs are JSON, parsed into the result line's `parsed`."""
        return self.json_schema is not None or self.json_object

    def merged(self, overrides: dict[str, Any] | None) -> GenerationParams:
        """These params with an item's overrides applied (validated again)."""
        if not overrides:
            return self
        base = self.model_dump()
        if any(overrides.get(n) not in (None, (), [], False) for n in CONSTRAINT_FIELDS):
            # An item's constraint replaces the job's (one constraint per output), and
            # label scoring goes with the job's labels unless the item brings its own.
            for name in CONSTRAINT_FIELDS:
                base[name] = GenerationParams.model_fields[name].default
            if not overrides.get("choices"):
                base["score_choices"] = False
        return GenerationParams.model_validate({**base, **overrides})

    def batch_key(self, per_row: frozenset[str] = frozenset()) -> tuple[Any, ...]:
        """Items whose params share this key can be generated in one batch: the seed,
        the constraint (each row has its own grammar matcher), label scoring and
        post-processing are per item, so they are not part of the key, nor the fields
        in `per_row` (those the engine takes per row, e.g. LENGTH_FIELDS)."""
        skip = PER_ROW_FIELDS | per_row
        return tuple(v for k, v in self.model_dump().items() if k not in skip)


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
