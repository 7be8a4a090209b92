"""Model engines and the registry that loads them by name.

Importing this package is cheap (no torch): the scheduler side and `--engine dry-run`
workers never pay for torch; "hf" and "deepspeed" import it when loaded.
"""

from __future__ import annotations

import hashlib
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
    "local_revision",
]

#: Engines `load_engine` knows, by the name users pass as `--engine`.
ENGINE_NAMES = ("hf", "deepspeed", "dry-run")


def load_engine(
    name: str,
    model_ref: str,
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    tensor_parallel: int = 1,
    host_memory_limit_mb: int | None = None,
) -> Engine:
    """Load `model_ref` (a resolved model reference) into the engine called `name`.

    Raises `EngineError` with an actionable message when that is not possible.
    """
    if name == "dry-run":
        from genqueue.worker.engines.dryrun import DryRunEngine

        return DryRunEngine(model_ref, revision=revision)
    if ":" in name:
        return _load_custom(name, model_ref, revision=revision, device=device, dtype=dtype)
    if name not in ENGINE_NAMES:
        raise EngineError(
            f"unknown engine {name!r}; available: {', '.join(ENGINE_NAMES)}, or "
            "'package.module:Class' for your own Engine implementation"
        )
    if tensor_parallel < 1:
        raise EngineError(f"tensor_parallel must be >= 1 (got {tensor_parallel})")
    if name == "hf":
        if tensor_parallel != 1:
            raise EngineError(
                "the hf engine runs one model replica per process; tensor parallelism "
                "needs engine 'deepspeed'"
            )
        from genqueue.worker.engines.hf import HFEngine

        return HFEngine(
            model_ref,
            revision=revision,
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            host_memory_limit_mb=host_memory_limit_mb,
        )
    from genqueue.worker.engines.deepspeed import DeepSpeedEngine

    return DeepSpeedEngine(
        model_ref,
        revision=revision,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        tensor_parallel=tensor_parallel,
        host_memory_limit_mb=host_memory_limit_mb,
    )


def _load_custom(spec: str, model_ref: str, **kwargs: object) -> Engine:
    """An engine of your own, `package.module:Class`: the class is called with the model
    reference and keyword arguments `revision`, `device` and `dtype`, and must provide
    the `Engine` interface (see engines/base.py)."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise EngineError(f"cannot load engine {spec!r}: {exc}") from exc
    engine = cls(model_ref, **kwargs)
    missing = [
        m
        for m in ("info", "count_tokens", "truncate", "generate", "close")
        if not hasattr(engine, m)
    ]
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


def local_revision(path: Path) -> str:
    """A content id for a local model directory: "local-" + a short sha256 over the
    weight files' names and sizes and config.json, so results record what ran."""
    digest = hashlib.sha256()
    for weight in sorted(path.glob("*.safetensors")):
        digest.update(f"{weight.name}:{weight.stat().st_size}\n".encode())
    config = path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    return "local-" + digest.hexdigest()[:12]
