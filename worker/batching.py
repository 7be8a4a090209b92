"""Micro-batching above the engines: token budget, out-of-memory backoff, isolation.

`generate_all` turns any number of requests into engine calls whose padded size fits a
token budget, and guarantees every request exactly one `GenResult`: problems with one
item (too long, fails to generate, does not fit in memory alone) become that item's
`ItemError` instead of failing its neighbours or the task.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from genqueue.settings import InputLimits
from genqueue.worker.engines.base import (
    Engine,
    GenRequest,
    GenResult,
    ItemError,
    OutOfMemory,
    PromptError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """How to cut requests into micro-batches.

    `token_budget` bounds the padded size of one engine call: rows x (longest prompt +
    max_new_tokens), rows counting beams and return sequences, a proxy for activation and
    KV-cache memory. `truncate` cuts over-long prompts to fit instead of failing them.
    """

    token_budget: int = 16384
    max_batch_size: int = 64
    truncate: bool = False
    #: A prompt (or conversation) longer than this is never tokenised: it fails alone,
    #: or with `truncate` is cut by characters first (GENQUEUE_MAX_PROMPT_CHARS).
    max_prompt_chars: int = InputLimits().max_prompt_chars


def continuous_items(engine: Engine) -> int:
    """How many requests an engine that batches continuously itself (vLLM) wants per
    call (its `continuous_batch`), or 0 for an engine that wants micro-batches."""
    items = getattr(engine, "continuous_batch", None)
    if isinstance(items, int) and not isinstance(items, bool) and items > 0:
        return items
    return 0


def for_engine(policy: BatchPolicy, engine: Engine) -> BatchPolicy:
    """The policy as `engine` wants it. An engine that batches continuously itself
    (vLLM) gets as many requests per call as it asks for (`continuous_items`), and no
    token budget, since its own scheduler bounds memory."""
    items = continuous_items(engine)
    if items:
        return replace(policy, token_budget=sys.maxsize, max_batch_size=items)
    return policy


@dataclass
class _Item:
    request: GenRequest
    tokens: int
    truncated: bool = False


def generate_all(
    engine: Engine,
    requests: Sequence[GenRequest],
    policy: BatchPolicy,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[list[GenResult]]:
    """Generate for all requests, yielding the results of each micro-batch as it is done
    (items rejected up front come first, in one list). Each request gets exactly one
    result, unless `should_stop()` turns true (checked before each engine call)."""
    items, rejected = _precheck(engine, requests, policy)
    if rejected:
        yield rejected
    groups: dict[tuple[Any, ...], list[_Item]] = {}
    keys: dict[int, tuple[Any, ...]] = {}  # items without overrides share one params object
    per_row = frozenset(getattr(engine, "per_row_params", ()))
    for item in items:
        params = item.request.params
        key = keys.get(id(params))
        if key is None:
            key = keys[id(params)] = params.batch_key(per_row)
        groups.setdefault(key, []).append(item)
    cap = max(1, policy.max_batch_size)  # lowered for good after an out-of-memory
    for group in groups.values():
        # Sorting keeps padding small: neighbours have similar output limits (a batch
        # runs until its longest row is done) and prompt lengths.
        group.sort(key=lambda it: (it.request.params.max_new_tokens, it.tokens))
        start = 0
        while start < len(group):
            if should_stop is not None and should_stop():
                return
            end = _batch_end(group, start, policy.token_budget, cap)
            batch = group[start:end]
            try:
                results = _run(engine, batch)
            except OutOfMemory as exc:
                if len(batch) > 1:
                    cap = max(1, len(batch) // 2)
                    log.warning("out of memory with %d items; batches now <= %d", len(batch), cap)
                    continue  # the same items again, in smaller batches
                results = [_oom_result(batch[0], exc)]
            except Exception as exc:
                log.warning("batch of %d failed (%r); retrying its items alone", len(batch), exc)
                yield from _isolate(engine, batch, should_stop)
                start = end
                continue
            start = end
            yield results


def _batch_end(group: list[_Item], start: int, budget: int, cap: int) -> int:
    """End index of the micro-batch starting at `start` (length-sorted `group`): as many
    items as fit both the padded token budget and `cap`, at least one."""
    params = group[start].request.params
    rows_per_item = params.num_beams * params.num_return_sequences
    longest, most_new = group[start].tokens, params.max_new_tokens
    end = start + 1
    while end < len(group) and end - start < cap:
        n = end - start + 1
        # The longest prompt and the largest output limit set the padded width.
        longest = max(longest, group[end].tokens)
        most_new = max(most_new, group[end].request.params.max_new_tokens)
        if n * rows_per_item * (longest + most_new) > budget:
            break
        end += 1
    return end


def _run(engine: Engine, batch: list[_Item]) -> list[GenResult]:
    """One engine call, checked: exactly one result per request."""
    results = engine.generate([it.request for it in batch])
    keys = [it.request.key for it in batch]
    if sorted(r.key for r in results) != sorted(keys):
        raise RuntimeError(
            f"engine returned results for keys {[r.key for r in results]}, not {keys}"
        )
    truncated = {it.request.key for it in batch if it.truncated}
    for res in results:
        res.truncated = res.truncated or res.key in truncated
    return results


def _isolate(
    engine: Engine, batch: list[_Item], should_stop: Callable[[], bool] | None
) -> Iterator[list[GenResult]]:
    """Retry a failed batch item by item, so one bad item fails alone."""
    for item in batch:
        if should_stop is not None and should_stop():
            return
        try:
            yield _run(engine, [item])
        except OutOfMemory as exc:
            yield [_oom_result(item, exc)]
        except Exception as exc:
            log.warning("item %s failed: %r", item.request.key, exc)
            error = ItemError("generation_error", f"{type(exc).__name__}: {exc}")
            yield [_error(item.request, error, item.tokens)]


def _precheck(
    engine: Engine, requests: Sequence[GenRequest], policy: BatchPolicy
) -> tuple[list[_Item], list[GenResult]]:
    """Tokenise each item once (its ids travel with it to the engine) and reject, or
    truncate, what cannot fit the context. Huge prompts are bounded by characters before
    anything is tokenised (`_bound`)."""
    max_ctx = engine.info.max_context
    items: list[_Item] = []
    rejected: list[GenResult] = []
    bounded: list[GenRequest] = []
    char_cut: set[int] = set()
    for req in requests:
        outcome = _bound(engine, req, policy)
        if isinstance(outcome, GenResult):
            rejected.append(outcome)
        else:
            if outcome is not req:
                char_cut.add(req.key)
            bounded.append(outcome)
    encoded = _tokenize(engine, bounded)
    for req, ids in zip(bounded, encoded, strict=True):
        if isinstance(ids, ItemError):
            rejected.append(_error(req, ids, 0))
            continue
        count = len(ids)
        max_new = req.params.max_new_tokens
        if max_ctx is None or count + max_new <= max_ctx:
            items.append(_Item(replace(req, token_ids=tuple(ids)), count, req.key in char_cut))
        elif max_new >= max_ctx:
            rejected.append(
                _error(
                    req,
                    ItemError(
                        "max_new_tokens_too_large",
                        f"max_new_tokens {max_new} leaves no room for a prompt in the model's "
                        f"context of {max_ctx} tokens; use max_new_tokens below {max_ctx}",
                    ),
                    count,
                )
            )
        elif policy.truncate:
            try:
                cut = engine.fit(req, max_ctx - max_new)
                [cut_ids] = engine.tokenize([cut])
            except Exception as exc:
                error = ItemError("generation_error", f"{type(exc).__name__}: {exc}")
                rejected.append(_error(req, error, count))
                continue
            if len(cut_ids) + max_new > max_ctx:  # a conversation's last turn alone too long
                rejected.append(_too_long(req, len(cut_ids), max_new, max_ctx))
                continue
            items.append(_Item(replace(cut, token_ids=tuple(cut_ids)), len(cut_ids), True))
        else:
            rejected.append(_too_long(req, count, max_new, max_ctx))
    return items, rejected


def _bound(engine: Engine, req: GenRequest, policy: BatchPolicy) -> GenRequest | GenResult:
    """The request as it may be tokenised: unchanged, cut by characters (`truncate`), or
    failed as too long without tokenising more than a bounded prefix.

    An engine may say how many characters its longest token stands for
    (`max_token_chars`): a prompt over (context + 1) times that many is then cut, or
    judged by a prefix of that size, and never tokenised whole."""
    chars = _chars(req)
    if req.messages is not None:
        # A conversation: only the character limit. Its chat template may drop parts of
        # it, and --truncate drops its oldest turns (PromptCodec.fit), so no prefix can
        # stand for it.
        if chars <= policy.max_prompt_chars:
            return req
        msg = (
            f"conversation is {chars:,} characters; at most {policy.max_prompt_chars:,} are "
            "allowed (GENQUEUE_MAX_PROMPT_CHARS); shorten it"
        )
        return _error(req, ItemError("prompt_too_long", msg), 0)
    max_ctx = engine.info.max_context
    token_chars = getattr(engine, "max_token_chars", None)
    limit = policy.max_prompt_chars
    if max_ctx is not None and isinstance(token_chars, int) and token_chars > 0:
        limit = min(limit, (max_ctx + 1) * token_chars)
    if chars <= limit:
        return req
    if policy.truncate:
        # Decoder-only models keep the end of a prompt, seq2seq ones its start (as the
        # exact cut does, see PromptCodec.truncate).
        keep_start = engine.info.is_encoder_decoder
        text = req.prompt[:limit] if keep_start else req.prompt[-limit:]
        return replace(req, prompt=text)
    max_new = req.params.max_new_tokens
    if chars > policy.max_prompt_chars or max_ctx is None:
        msg = (
            f"prompt is {chars:,} characters; at most {policy.max_prompt_chars:,} are "
            "allowed (GENQUEUE_MAX_PROMPT_CHARS); shorten it or submit with --truncate"
        )
        return _error(req, ItemError("prompt_too_long", msg), 0)
    # Count a prefix only: if it alone is too long, so is the whole prompt (joining the
    # cut's last token with what follows may save one token).
    try:
        [ids] = engine.tokenize([replace(req, prompt=req.prompt[:limit])])
    except Exception:
        return req  # let the normal path report what is wrong with it
    count = len(ids) - 1
    if count + max_new > max_ctx:
        return _too_long(req, count, max_new, max_ctx, at_least=True)
    return req  # a normaliser shrank it: count it whole (it is within the char limit)


def _chars(req: GenRequest) -> int:
    if req.messages is None:
        return len(req.prompt)
    return sum(len(m.get("content") or "") for m in req.messages)


def _too_long(
    req: GenRequest, count: int, max_new: int, max_ctx: int, *, at_least: bool = False
) -> GenResult:
    more = "more than " if at_least else ""
    msg = (
        f"prompt has {more}{count} tokens; with max_new_tokens {max_new} it exceeds the "
        f"model's context of {max_ctx} tokens; shorten it, lower max_new_tokens, or "
        "submit with --truncate"
    )
    return _error(req, ItemError("prompt_too_long", msg), count)


def _tokenize(engine: Engine, requests: Sequence[GenRequest]) -> list[list[int] | ItemError]:
    """Token ids in one call; if that fails, item by item so only bad items fail."""
    try:
        return list(engine.tokenize(requests))
    except Exception:
        log.warning("tokenising %d prompts failed; tokenising one by one", len(requests))
    out: list[list[int] | ItemError] = []
    for req in requests:
        try:
            out.append(engine.tokenize([req])[0])
        except PromptError as exc:
            out.append(ItemError(exc.code, str(exc)))
        except Exception as exc:
            out.append(ItemError("generation_error", f"{type(exc).__name__}: {exc}"))
    return out


def _oom_result(item: _Item, exc: OutOfMemory) -> GenResult:
    msg = (
        f"out of memory even alone ({exc}); lower max_new_tokens, num_beams or "
        "num_return_sequences, or shorten the prompt"
    )
    return _error(item.request, ItemError("out_of_memory", msg), item.tokens)


def _error(req: GenRequest, error: ItemError, tokens: int) -> GenResult:
    return GenResult(key=req.key, prompt_tokens=tokens, error=error)
