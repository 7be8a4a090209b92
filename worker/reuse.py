"""Result reuse: work not done is the fastest.

Every result a worker generates carries a *reuse key*: a digest of what decides its
output exactly — the model (reference and the revision this worker loaded), the engine
with its precision (`hf`, `hf+int8`, ...), the item's params with its own seed, the
rendered prompt (the prompt, or the conversation and the chat template it goes through)
and the job's truncation. A job submitted with `--reuse` looks its items' keys up when
a worker claims them and copies the results of identical items that already succeeded
(in any job of the same tenant) instead of generating them.

The key is computed in the worker because only the worker knows the revision it loaded
and the engine it runs; the scheduler knows neither. A sampled item without a seed is
not reproducible, so it gets no key: it is never reused, and never reused from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from genqueue.storage import reuse as stored_reuse
from genqueue.storage.claims import Claim
from genqueue.storage.db import Store
from genqueue.storage.results import NewResult
from genqueue.worker.engines.base import GenRequest, ModelInfo

#: Bumped when what goes into a key changes, so old keys never match new ones.
_VERSION = 1


def reuse_key(
    request: GenRequest, info: ModelInfo, *, truncate: bool, max_prompt_chars: int | None
) -> str | None:
    """The request's reuse key (32 hex digits), or None when its output is not
    reproducible (sampling without a seed)."""
    params = request.params
    if params.do_sample and request.seed is None:
        return None
    what = {
        "v": _VERSION,
        "model": info.model_ref,
        "revision": info.revision,
        "engine": info.engine,
        "params": params.model_dump(mode="json"),
        "seed": request.seed,
        "prompt": request.prompt if request.messages is None else None,
        "messages": list(request.messages) if request.messages is not None else None,
        "chat_template": request.chat_template if request.messages is not None else None,
        "truncate": [truncate, max_prompt_chars if truncate else None],
    }
    text = json.dumps(what, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def take_reusable(
    store: Store, claim: Claim, requests: Sequence[GenRequest], keys: dict[int, str | None]
) -> tuple[list[GenRequest], list[NewResult]]:
    """For a job that asked for reuse: the requests still to generate, and copied
    results for those whose key matches a succeeded result of the same tenant."""
    wanted = {k for k in keys.values() if k is not None}
    if not wanted:
        return list(requests), []
    found = stored_reuse.find_reusable(store, claim.job_id, sorted(wanted))
    todo: list[GenRequest] = []
    copied: list[NewResult] = []
    for q in requests:
        key = keys.get(q.key)
        source = found.get(key) if key is not None else None
        if source is None:
            todo.append(q)
        else:
            copied.append(stored_reuse.copy_of(source, idx=q.key))
    return todo, copied
