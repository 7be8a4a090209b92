"""What can be checked about a model at submission, without loading it (no torch): that
a local directory exists and holds safetensors weights, that max_new_tokens fits its
context, and that a chat job has a chat template to render with."""

from __future__ import annotations

import json
from pathlib import Path

from genqueue.params import GenerationParams
from genqueue.protocol import TINY_MODELS, context_length, local_model_problem, resolve_model_ref
from genqueue.scheduler.errors import SpecError

#: Where a saved tokenizer keeps its chat template (transformers 5 writes the first).
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def check_model(
    model: str, params: GenerationParams, *, chat: bool = False, chat_template: str | None = None
) -> str:
    """Resolve the model reference and catch what can be caught before any work: a local
    path that does not exist, a directory without safetensors weights, max_new_tokens
    beyond the model's context (read from config.json), a chat job for a model without a
    chat template (unless the job brings its own). Hub ids are checked by the worker
    that downloads them. Returns the resolved reference."""
    ref = resolve_model_ref(model)
    if model in TINY_MODELS:
        return ref  # built on first use, with a chat template
    path = Path(ref)
    if not path.is_absolute():
        return ref
    problem = local_model_problem(path)
    if problem:
        hub = (
            ""
            if path.exists()
            else " (a local model directory, or a hub id like google/flan-t5-small)"
        )
        raise SpecError(f"model: {problem}{hub}")
    cfg_path = path / "config.json"
    if cfg_path.exists():
        limit = context_length(json.loads(cfg_path.read_text()))
        if limit is not None and params.max_new_tokens >= limit:
            raise SpecError(
                f"max_new_tokens: {params.max_new_tokens} is not below the model's context of "
                f"{limit} tokens; use at most {limit - 1}"
            )
    if chat and chat_template is None and not has_chat_template(path):
        raise SpecError(
            f"model {model} has no chat template, so its conversations cannot be rendered; "
            "pass --chat-template FILE (a Jinja template), or use a chat model"
        )
    return ref


def has_chat_template(path: Path) -> bool:
    """Whether a saved tokenizer directory carries a chat template."""
    if any((path / name).is_file() for name in _TEMPLATE_FILES):
        return True
    config = path / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False
