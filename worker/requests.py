"""A claim's items as engine requests, and engine results as result rows."""

from __future__ import annotations

import json

from genqueue import postprocess
from genqueue.params import GenerationParams, item_seed
from genqueue.storage.claims import Claim
from genqueue.storage.models import ResultStatus
from genqueue.storage.results import NewResult
from genqueue.worker.engines.base import GenRequest, GenResult


def build_requests(claim: Claim) -> list[GenRequest]:
    """One request per item still lacking a result: the job's params with the item's
    overrides, and the item's own seed (see genqueue.params.item_seed)."""
    base = GenerationParams.model_validate(claim.job_params)
    return [
        GenRequest(
            key=it.idx,
            prompt=it.prompt,
            params=base.merged(it.params),
            seed=item_seed(base.seed, (it.params or {}).get("seed"), it.idx),
            messages=tuple(it.messages) if it.messages is not None else None,
            chat_template=claim.chat_template,
        )
        for it in claim.items
    ]


def to_new_result(
    r: GenResult,
    latency_ms: float,
    params: GenerationParams | None = None,
    reuse_key: str | None = None,
) -> NewResult:
    """The row to store for an engine result (a failure keeps its code and message):
    JSON outputs parsed, post-processing applied (the raw generation kept). A success
    keeps `reuse_key` (worker/reuse.py), so later jobs can reuse it."""
    if r.error is not None:
        return NewResult(
            idx=r.key,
            status=ResultStatus.FAILED,
            error_code=r.error.code,
            error_message=r.error.message,
            prompt_tokens=r.prompt_tokens or None,
            truncated=r.truncated,
            latency_ms=latency_ms,
        )
    many = len(r.outputs) > 1
    raw = list(r.outputs)
    steps = params.postprocess if params is not None else ()
    shown = [postprocess.apply(steps, o) for o in raw] if steps else raw
    # Like `output`, `finish_reason` and `logprobs`, these describe the first output.
    incomplete = bool(r.incomplete and r.incomplete[0])
    parsed = None
    if params is not None and params.wants_json and raw and not incomplete:
        try:
            parsed = json.loads(raw[0])
        except ValueError:  # cannot happen for a complete constrained output
            incomplete = True
    return NewResult(
        idx=r.key,
        status=ResultStatus.SUCCEEDED,
        output=shown[0] if shown else "",
        outputs=shown if many else None,
        raw_output=raw[0] if steps and raw else None,
        raw_outputs=raw if steps and many else None,
        parsed=parsed,
        incomplete=incomplete or None,
        logprobs=r.logprobs,
        choice_scores=r.choice_scores,
        finish_reason=r.finish_reasons[0] if r.finish_reasons else None,
        finish_reasons=list(r.finish_reasons) if many else None,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        truncated=r.truncated,
        latency_ms=latency_ms,
        reuse_key=reuse_key,
    )
