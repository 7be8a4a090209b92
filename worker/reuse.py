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


def reuse_keys(
    requests: Sequence[GenRequest], info: ModelInfo, *, truncate: bool, max_prompt_chars: int
) -> dict[int, str | None]:
    """Each request's reuse key (32 hex digits), or None when its output is not
    reproducible (sampling without a seed). What the requests share (model, engine,
    params: usually one object for a whole task) is encoded once."""
    shared: dict[int, bytes] = {}
    keys: dict[int, str | None] = {}
    for q in requests:
        params = q.params
        if params.do_sample and q.seed is None:
            keys[q.key] = None
            continue
        head = shared.get(id(params))
        if head is None:
            head = shared[id(params)] = _encode(
                {
                    "v": _VERSION,
                    "model": info.model_ref,
                    "revision": info.revision,
                    "engine": info.engine,
                    "params": params.model_dump(mode="json"),
                    "truncate": [truncate, max_prompt_chars if truncate else None],
                }
            )
        digest = hashlib.sha256(head)
        if q.messages is None:  # the common case, kept cheap: no JSON per item
            digest.update(f"\x00p{q.seed}\x00{q.prompt}".encode())
        else:
            digest.update(b"\x00m" + _encode([q.seed, list(q.messages), q.chat_template]))
        keys[q.key] = digest.hexdigest()[:32]
    return keys


def _encode(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


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
