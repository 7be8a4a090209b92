"""How a worker loads and runs its model: one typed object, read by everyone.

`genqueue worker` (and `genqueue run`) build their flags from these fields, the
supervisor passes them to each model process as command-line arguments (`to_args`), the
process reads them back (`from_args`), and every engine, custom ones included, is built
from them (`load_engine(options)`). A new option is one field here.
"""

from __future__ import annotations

import argparse
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field


class WorkerOptions(BaseModel):
    """A worker's model and how to run it. `model` is the reference as given (the worker
    resolves it); every other field has the default a bare `genqueue worker` uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        description="The model this worker serves: the same string as in submissions "
        "(hub id, local directory, or tiny-gpt2 / tiny-t5)"
    )
    engine: str = Field(
        "hf", description="hf | deepspeed | vllm | dry-run, or package.module:Class for your own"
    )
    revision: str | None = Field(None, description="Model revision (hub branch, tag or commit)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field(
        "auto",
        description="auto | float32 | float16 | bfloat16 (on CPU: bfloat16 needs "
        "AVX512-BF16 or AMX, else it is refused)",
    )
    quantize: str = Field(
        "none",
        description="none | int8: dynamic int8 quantisation of the model's linear layers "
        "(hf engine on CPU, float32)",
    )
    threads: int = Field(0, ge=0, description="CPU threads per process (0 = split the cores)")
    tensor_parallel: int = Field(1, ge=1, description="GPUs per process (deepspeed engine)")
    trust_remote_code: bool = Field(
        False,
        description="Run model code from the model's repository. Such a worker runs only "
        "jobs submitted with --trust-remote-code, and a worker without it fails their items",
    )
    host_memory_limit_mb: int | None = Field(
        None, ge=1, description="CPU: halve a micro-batch whose KV cache would exceed this"
    )
    hf_batching: str = Field(
        "static",
        pattern="^(static|continuous)$",
        description="hf engine: static (padded batches, generate) | continuous "
        "(transformers' generate_batch, paged KV cache: a GPU path, slower on CPU); "
        "greedy decoder-only items without constraints, penalties or logprobs use it, "
        "the rest run static",
    )

    def to_args(self) -> list[str]:
        """Command-line arguments that `from_args` turns back into these options (only
        the fields that differ from their defaults)."""
        args: list[str] = []
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if not info.is_required() and value == info.default:
                continue
            flag = _flag(name)
            if isinstance(value, bool):
                args.append(flag if value else f"--no-{flag[2:]}")
            else:
                args += [flag, str(value)]
        return args

    @classmethod
    def from_args(cls, argv: list[str]) -> tuple[Self, list[str]]:
        """Options from `to_args`'s arguments; returns them and the arguments left over."""
        parser = argparse.ArgumentParser(add_help=False)
        for name, info in cls.model_fields.items():
            flag = _flag(name)
            if info.annotation is bool:
                parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction)
            else:
                parser.add_argument(flag, dest=name, required=info.is_required())
        known, rest = parser.parse_known_args(argv)
        values: dict[str, Any] = {k: v for k, v in vars(known).items() if v is not None}
        return cls.model_validate(values), rest


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def start_command(
    model: str,
    *,
    revision: str | None = None,
    engine: str | None = None,
    trust_remote_code: bool = False,
) -> str:
    """The `genqueue worker ...` command line that serves a model (what to tell a user
    whose job waits for a worker)."""
    import shlex

    options = WorkerOptions(
        model=model,
        revision=revision,
        engine=engine or "hf",
        trust_remote_code=trust_remote_code,
    )
    return shlex.join(["genqueue", "worker", *options.to_args()])
