"""The contract between scheduler and workers: task name, queue names, model references.

Both sides import this module (it imports nothing heavy), so a queue name computed at
submission always matches the one a worker for the same model consumes.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Celery task name; the scheduler sends it by name and never imports worker code.
TASK_NAME = "genqueue.run_task"

#: Built-in tiny models, built locally on first use (no download); for quick starts and
#: tests. Their weights are random: the text they generate is gibberish. The bench-*
#: models have the shapes of real ones (a ~25M-parameter Llama with GQA and RoPE, and
#: GPT-2 small's 124M) for benchmarks of generation rather than of overhead.
TINY_MODELS = ("tiny-gpt2", "tiny-t5", "bench-llama-25m", "bench-gpt2-124m")


def cache_dir() -> Path:
    """Where genqueue keeps built tiny models and embedded-run state by default."""
    root = os.environ.get("GENQUEUE_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "genqueue"
    )
    return Path(root)


def resolve_model_ref(model: str) -> str:
    """Canonical model reference: a built-in tiny model's directory, an absolute path for
    a local directory, or the hub id unchanged."""
    if model in TINY_MODELS:
        return str(cache_dir() / "models" / model)
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        return str(path.resolve())
    return model


def queue_for(model_ref: str, revision: str | None = None) -> str:
    """The Redis queue of one model: readable slug plus a short hash of the exact ref."""
    key = f"{model_ref}@{revision or ''}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model_ref).name or model_ref)[:48].strip("-")
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"genqueue.{slug}.{digest}"


def queue_revision(model_ref: str, queue: str, revision: str | None) -> str | None:
    """The revision a worker names to serve `queue`: `revision` when the queue was made
    with it, else None. A job that named no revision keeps its queue, while its stored
    revision becomes what its first worker loaded; naming that one would start a worker
    on another queue."""
    return revision if revision and queue_for(model_ref, revision) == queue else None


def local_model_problem(path: Path) -> str | None:
    """Why `path` cannot load as a local model, or None. genqueue loads safetensors only
    (pickled weights can run code); checked at submission and again by the worker."""
    if not path.exists():
        return f"model directory {path} does not exist"
    if not path.is_dir():
        return f"{path} is a file; pass the directory save_pretrained wrote"
    if not any(path.glob("*.safetensors")):
        found = sorted(p.name for p in path.glob("*.bin")) + sorted(
            p.name for p in path.glob("*.pt")
        )
        hint = f" (found {', '.join(found[:3])})" if found else ""
        return (
            f"no safetensors weights in {path}{hint}; genqueue loads safetensors only "
            "(convert with `AutoModel.from_pretrained(dir).save_pretrained(dir, "
            "safe_serialization=True)` in a trusted environment)"
        )
    return None


#: Config keys that give a model's context length (prompt + new tokens), in the order
#: they are trusted: architectures name it differently, and some carry several.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(config: Mapping[str, Any]) -> int | None:
    """The context length a model config (config.json's keys) declares, or None when it
    declares none (e.g. T5's relative attention has no fixed limit)."""
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
