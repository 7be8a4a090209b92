"""Structured outputs, log-probabilities, label scores and the new decoding params on the
real tiny models, through the batching layer the workers use."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import torch

from genqueue.params import GenerationParams
from genqueue.worker.batching import BatchPolicy, generate_all
from genqueue.worker.engines.base import GenRequest, GenResult
from genqueue.worker.engines.constrained import OpenAIPenalties
from genqueue.worker.engines.hf import HFEngine
from genqueue.worker.requests import to_new_result
from genqueue.worker.sampling import filter_logits

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"enum": ["pos", "neg", "mixed"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "sure": {"type": "boolean"},
    },
    "required": ["label", "stars", "sure"],
    "additionalProperties": False,
}
LABELS = ("positive", "negative", "neutral", 'it\'s "complicated" | n/a')
PATTERN = r"[A-Z]{2}-[0-9]{3}"

CONSTRAINTS: list[dict[str, Any]] = [
    {"choices": LABELS},
    {"regex": PATTERN},
    {"json_schema": SCHEMA},
    {"json_object": True},
    {},
]


def satisfied(params: GenerationParams, text: str) -> bool:
    if params.choices:
        return text in params.choices
    if params.regex:
        return re.fullmatch(params.regex, text) is not None
    if params.json_schema is not None:
        jsonschema.validate(json.loads(text), params.json_schema)
        return True
    if params.json_object:
        return isinstance(json.loads(text), dict)
    return True


def requests(n: int, base: dict[str, Any], *, offset: int = 0) -> list[GenRequest]:
    out = []
    for i in range(n):
        params = GenerationParams(**base, **CONSTRAINTS[i % len(CONSTRAINTS)])
        seed = params.seed + i if params.seed is not None else None
        out.append(
            GenRequest(
                key=offset + i, prompt=f"Review {i}: " + "good " * (i % 5), params=params, seed=seed
            )
        )
    return out


def run_all(engine: HFEngine, reqs: list[GenRequest], batch: int = 32) -> dict[int, GenResult]:
    policy = BatchPolicy(max_batch_size=batch)
    return {r.key: r for part in generate_all(engine, reqs, policy) for r in part}


@pytest.mark.parametrize(
    "base",
    [
        {"max_new_tokens": 40},
        {"max_new_tokens": 40, "do_sample": True, "seed": 11, "temperature": 1.3},
    ],
    ids=["greedy", "seeded"],
)
def test_every_constrained_output_satisfies_its_constraint(
    gpt2: HFEngine, base: dict[str, Any]
) -> None:
    """Hundreds of items, five kinds of constraint mixed in each micro-batch: every
    complete output satisfies its own constraint; cut ones say so and are not parsed."""
    reqs = requests(200, base)
    before = gpt2.grammars.compiles
    results = run_all(gpt2, reqs)
    # Items with different constraints share a micro-batch: one key for all of them.
    assert len({q.params.batch_key() for q in reqs}) == 1
    # Four grammars, each compiled at most once (the cache), never once per item.
    assert gpt2.grammars.compiles - before <= 4
    complete = 0
    for q in reqs:
        res = results[q.key]
        assert res.error is None
        row = to_new_result(res, 0.0, q.params)
        constrained = bool(q.params.constraint_fields())
        if constrained and res.finish_reasons[0] == "length" and res.incomplete[0]:
            assert row.incomplete and row.parsed is None
            continue
        assert satisfied(q.params, res.outputs[0]), (q.params.constraint_fields(), res.outputs)
        if q.params.wants_json:
            assert row.parsed == json.loads(res.outputs[0])
        complete += constrained
    # The choices, regex and schema grammars always finish within 40 tokens.
    assert complete >= 120


def test_seeded_constrained_output_does_not_depend_on_its_batch(gpt2: HFEngine) -> None:
    base = {"max_new_tokens": 24, "do_sample": True, "seed": 5}
    reqs = requests(20, base)
    together = run_all(gpt2, reqs, batch=20)
    alone = {q.key: gpt2.generate([q])[0] for q in reqs[:6]}
    for key, res in alone.items():
        assert res.outputs == together[key].outputs


def test_an_output_cut_before_its_grammar_completes_is_flagged(gpt2: HFEngine) -> None:
    params = GenerationParams(max_new_tokens=3, json_schema=SCHEMA)
    [res] = gpt2.generate([GenRequest(key=0, prompt="Rate it", params=params)])
    assert res.finish_reasons == ["length"] and res.incomplete == [True]
    row = to_new_result(res, 0.0, params)
    assert row.incomplete is True and row.parsed is None and row.finish_reason == "length"


def test_several_outputs_describe_the_first_and_always_export() -> None:
    """`parsed` and `incomplete` describe the first output, as `output` does: a later
    output cut short does not make the line contradict itself (or fail to export)."""
    from genqueue.resultline import ResultLine

    params = GenerationParams(
        max_new_tokens=8, json_object=True, do_sample=True, seed=1, num_return_sequences=2
    )
    res = GenResult(
        key=0,
        outputs=['{"a": 1}', '{"a'],
        finish_reasons=["stop", "length"],
        prompt_tokens=3,
        completion_tokens=9,
        incomplete=[False, True],
    )
    row = to_new_result(res, 0.0, params)
    assert row.parsed == {"a": 1} and not row.incomplete
    cut_first = to_new_result(
        GenResult(**{**res.__dict__, "outputs": ['{"a', '{"a": 1}'], "incomplete": [True, False]}),
        0.0,
        params,
    )
    assert cut_first.parsed is None and cut_first.incomplete
    # A row stored with a later output's flag beside the first one's value still reads.
    line = ResultLine.from_stored(
        index=0, custom_id="x", status="succeeded", output=None, outputs=res.outputs,
        finish_reason="stop", prompt_tokens=3, completion_tokens=9, error_code=None,
        error_message=None, truncated=False, parsed={"a": 1}, incomplete=True,
    )  # fmt: skip
    assert line.parsed == {"a": 1} and line.incomplete is False


def _direct_logprobs(engine: HFEngine, prompt_ids: list[int], new_ids: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt_ids + new_ids])
    with torch.inference_mode():
        logits = engine.model(input_ids=ids).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    n = len(prompt_ids)
    return logp[n - 1 : n - 1 + len(new_ids)]


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "seeded"])
def test_logprobs_agree_with_a_direct_forward_pass(gpt2: HFEngine, sample: bool) -> None:
    params = GenerationParams(
        max_new_tokens=8, logprobs=True, top_logprobs=5, do_sample=sample, seed=3
    )
    reqs = [
        GenRequest(key=i, prompt="word " * (1 + i * 3), params=params, seed=100 + i)
        for i in range(4)
    ]
    results = gpt2.generate(reqs)  # one left-padded batch
    vocab = len(gpt2.tokenizer)
    by_bytes = {gpt2.grammars.token_bytes(t): t for t in reversed(range(vocab))}
    for q, res in zip(reqs, results, strict=True):
        assert res.logprobs is not None
        content = res.logprobs[0]["content"]
        prompt_ids = gpt2.tokenize([q])[0]
        ids = [by_bytes[bytes(e["bytes"])] for e in content]
        # The tokens the logprobs name spell the output.
        assert gpt2._decode(ids) == res.outputs[0]
        direct = _direct_logprobs(gpt2, prompt_ids, ids)
        for step, (entry, tok) in enumerate(zip(content, ids, strict=True)):
            assert entry["logprob"] == pytest.approx(float(direct[step, tok]), abs=1e-4)
            top = torch.topk(direct[step], 5)
            assert [a["logprob"] for a in entry["top_logprobs"]] == pytest.approx(
                top.values.tolist(), abs=1e-4
            )
            assert entry["logprob"] <= entry["top_logprobs"][0]["logprob"] + 1e-6


def _teacher_forced(engine: HFEngine, prompt_ids: list[int], label: str) -> float:
    target = [*engine.tokenizer(label, add_special_tokens=False)["input_ids"]]
    target.append(engine.tokenizer.eos_token_id)
    if engine.is_encoder_decoder:
        start = engine.config.decoder_start_token_id
        with torch.inference_mode():
            logits = engine.model(
                input_ids=torch.tensor([prompt_ids]),
                decoder_input_ids=torch.tensor([[start, *target[:-1]]]),
            ).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        return float(sum(logp[i, t] for i, t in enumerate(target)))
    logp = _direct_logprobs(engine, prompt_ids, target)
    return float(sum(logp[i, t] for i, t in enumerate(target)))


@pytest.mark.parametrize("model", ["gpt2", "t5"])
def test_label_scores_agree_with_teacher_forcing(
    model: str, request: pytest.FixtureRequest
) -> None:
    engine: HFEngine = request.getfixturevalue(model)
    params = GenerationParams(max_new_tokens=40, choices=LABELS, score_choices=True)
    reqs = [
        GenRequest(key=i, prompt="This film was " + "really " * i, params=params) for i in range(6)
    ]
    results = engine.generate(reqs)
    for q, res in zip(reqs, results, strict=True):
        assert res.choice_scores is not None and set(res.choice_scores) == set(LABELS)
        prompt_ids = engine.tokenize([q])[0]
        for label in LABELS:
            assert res.choice_scores[label] == pytest.approx(
                _teacher_forced(engine, prompt_ids, label), abs=1e-3
            )
        # Greedy: the output is the likeliest label, which token-by-token constrained
        # decoding alone often missed (12 of 20 lines in a labelling run).
        best = max(LABELS, key=lambda label: res.choice_scores[label])
        assert res.outputs == [best] and res.finish_reasons == ["stop"]
        tokens = len(engine.tokenizer(best, add_special_tokens=False)["input_ids"])
        assert res.completion_tokens == tokens + 1
    # With log-probabilities the output stays the decoded one, which they describe.
    with_logprobs = params.model_copy(update={"logprobs": True})
    (res,) = engine.generate([GenRequest(key=0, prompt="This film was", params=with_logprobs)])
    assert res.outputs[0] in LABELS and res.logprobs is not None


def test_openai_penalties_follow_openai_semantics() -> None:
    scores = torch.zeros(2, 6)
    ids = torch.tensor([[9, 9, 1, 1, 1, 2], [9, 9, 3, 3, 0, 0]])
    out = OpenAIPenalties(2, presence=0.5, frequency=0.25)(ids, scores)  # type: ignore[arg-type]
    expected = torch.zeros(2, 6)
    expected[0, 1] = -(0.5 + 3 * 0.25)
    expected[0, 2] = -(0.5 + 0.25)
    expected[1, 3] = -(0.5 + 2 * 0.25)
    expected[1, 0] = -(0.5 + 2 * 0.25)
    assert torch.allclose(out, expected)


def test_min_p_and_typical_p_filter_like_transformers() -> None:
    from transformers import MinPLogitsWarper, TypicalLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    ids = torch.zeros(3, 1, dtype=torch.long)
    ours = filter_logits(logits, top_k=0, top_p=1.0, min_p=0.2)
    theirs = MinPLogitsWarper(0.2)(ids, logits.clone())  # type: ignore[arg-type]
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    ours = filter_logits(logits, top_k=0, top_p=1.0, typical_p=0.7)
    theirs = TypicalLogitsWarper(0.7)(ids, logits.clone())  # type: ignore[arg-type]
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))


def test_penalties_and_sampling_filters_change_generation(gpt2: HFEngine) -> None:
    def out(**kw: Any) -> list[str]:
        params = GenerationParams(max_new_tokens=16, **kw)
        reqs = [GenRequest(key=i, prompt=f"the {i}", params=params, seed=i) for i in range(4)]
        return [r.outputs[0] for r in gpt2.generate(reqs)]

    plain = out()
    assert out(frequency_penalty=2.0) != plain
    assert out(presence_penalty=2.0) != plain
    sampled = out(do_sample=True, seed=1)
    assert out(do_sample=True, seed=1) == sampled  # reproducible
    assert out(do_sample=True, seed=1, min_p=0.5) != sampled
    assert out(do_sample=True, seed=1, typical_p=0.2) != sampled
    beam = GenerationParams(num_beams=3, length_penalty=-2.5, early_stopping=True)
    kwargs = gpt2._generate_kwargs(beam, [0])
    assert (kwargs["length_penalty"], kwargs["early_stopping"]) == (-2.5, True)
    assert len(out(num_beams=3, length_penalty=-2.5, early_stopping=True)) == 4
