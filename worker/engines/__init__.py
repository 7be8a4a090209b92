"""Model engines and the registry that loads them by name.

Importing this package is cheap (no torch): the scheduler side and `--engine dry-run`
workers never pay for torch; "hf" and "deepspeed" import it when loaded, and "vllm"
imports vLLM (an optional extra, genqueue[vllm]) only when chosen.

Every engine, built-in or your own (`--engine package.module:Class`), is constructed the
same way: `Engine(options)`, with the worker's `WorkerOptions` (its `model` already
resolved to a local directory or a hub id). It must provide the `Engine` interface of
engines/base.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from genqueue.protocol import local_model_problem, resolve_model_ref
from genqueue.worker.engines.base import (
    Engine,
    GenRequest,
    GenResult,
    ItemError,
    ModelInfo,
    OutOfMemory,
)
from genqueue.worker.errors import EngineError
from genqueue.workeropts import WorkerOptions

__all__ = [
    "ENGINE_NAMES",
    "Engine",
    "EngineError",
    "GenRequest",
    "GenResult",
    "ItemError",
    "ModelInfo",
    "OutOfMemory",
    "check_model_ref",
    "load_engine",
]

#: Engines `load_engine` knows, by the name users pass as `--engine`, and where each
#: class lives (imported only when chosen).
_BUILT_IN = {
    "hf": "genqueue.worker.engines.hf:HFEngine",
    "deepspeed": "genqueue.worker.engines.deepspeed:DeepSpeedEngine",
    "dry-run": "genqueue.worker.engines.dryrun:DryRunEngine",
    "vllm": "genqueue.worker.engines.vllm:VLLMEngine",
}
ENGINE_NAMES = tuple(_BUILT_IN)


def engine_module(name: str) -> str:
    """The module that holds built-in engine `name` (not imported here)."""
    return _BUILT_IN[name].partition(":")[0]


#: What an engine must provide (see engines/base.py).
_REQUIRED = ("info", "count_tokens", "truncate", "generate", "close")


def load_engine(options: WorkerOptions) -> Engine:
    """Load the engine `options.engine` for `options.model` (resolved first).

    Raises `EngineError` with an actionable message when that is not possible.
    """
    name = options.engine
    if name not in _BUILT_IN and ":" not in name:
        raise EngineError(
            f"unknown engine {name!r}; available: {', '.join(ENGINE_NAMES)}, or "
            "'package.module:Class' for your own Engine implementation"
        )
    resolved = options.model_copy(update={"model": resolve_model_ref(options.model)})
    spec = _BUILT_IN.get(name, name)
    module_name, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise EngineError(f"cannot load engine {spec!r}: {exc}") from exc
    engine = cls(resolved)
    missing = [m for m in _REQUIRED if not hasattr(engine, m)]
    if missing:
        raise EngineError(
            f"engine {spec!r} lacks {', '.join(missing)} (see Engine in "
            "genqueue/worker/engines/base.py)"
        )
    return engine


def check_model_ref(model_ref: str) -> str:
    """The model reference ready for `from_pretrained`: a built-in tiny model is built on
    first use; a local directory must exist and hold safetensors weights. Hub ids pass
    through (the loader reports hub problems)."""
    from genqueue.worker.tinymodels import ensure_tiny_model, is_tiny_model_ref

    tiny = is_tiny_model_ref(model_ref)
    if tiny is not None:
        path = Path(resolve_model_ref(tiny))
        return str(ensure_tiny_model(tiny, path))
    path = Path(model_ref).expanduser()
    looks_local = model_ref.startswith((".", "/", "~")) or path.exists()
    if not looks_local:
        return model_ref
    problem = local_model_problem(path)
    if problem:
        raise EngineError(problem)
    return str(path.resolve())
