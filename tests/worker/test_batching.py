"""Micro-batching: token budget, batch-invariant outputs, OOM backoff, isolation, limits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from genqueue.params import GenerationParams
from genqueue.worker.batching import BatchPolicy, generate_all
from genqueue.worker.engines import GenRequest, GenResult, ModelInfo, OutOfMemory
from genqueue.worker.engines.base import Engine
from genqueue.worker.engines.hf import HFEngine

PROMPTS = [
    "A",
    "The library",
    "Computers follow instructions exactly, which is both their strength and weakness.",
    "Hello there",
    "In the mountains the weather changes quickly; a clear afternoon can turn into a storm.",
    "Seven",
    "The morning train left the station a few minutes late",
    "Gardening teaches patience.",
    "Questions and answers: What is the capital of France?",
    "bread",
]


@dataclass
class FakeEngine:
    """A test double at the engine boundary: one token per word, records every call."""

    max_context: int | None = None
    batches: list[list[int]] = field(default_factory=list)
    info: ModelInfo = field(init=False)

    def __post_init__(self) -> None:
        self.info = ModelInfo("fake", None, "fake", False, self.max_context, "cpu", "none")

    def tokenize(self, requests: Sequence[GenRequest]) -> list[list[int]]:
        return [list(range(n)) for n in self.count_tokens([r.prompt for r in requests])]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def fit(self, request: GenRequest, max_tokens: int) -> GenRequest:
        return replace(request, prompt=" ".join(request.prompt.split()[-max_tokens:]))

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        self.batches.append([r.key for r in requests])
        return [
            GenResult(r.key, [f"out:{r.prompt}"], ["length"], len(r.prompt.split()))
            for r in requests
        ]

    def close(self) -> None:
        pass


@dataclass
class Wrapped:
    """A real engine whose generate can be made to fail, recording every call's keys."""

    inner: Engine
    fail: Callable[[Sequence[GenRequest]], None] = lambda _reqs: None
    calls: list[list[int]] = field(default_factory=list)

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    def tokenize(self, requests: Sequence[GenRequest]) -> list[list[int]]:
        return self.inner.tokenize(requests)

    def fit(self, request: GenRequest, max_tokens: int) -> GenRequest:
        return self.inner.fit(request, max_tokens)

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        self.calls.append([r.key for r in requests])
        self.fail(requests)
        return self.inner.generate(requests)

    def close(self) -> None:
        pass


def requests_for(prompts: Sequence[str], params: GenerationParams) -> list[GenRequest]:
    return [GenRequest(i, p, params) for i, p in enumerate(prompts)]


def run(engine: Engine, reqs: Sequence[GenRequest], policy: BatchPolicy) -> dict[int, GenResult]:
    """All results by key, checking each request got exactly one."""
    results = [r for batch in generate_all(engine, reqs, policy) for r in batch]
    assert sorted(r.key for r in results) == sorted(r.key for r in reqs)
    return {r.key: r for r in results}


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 60), min_size=1, max_size=40),
    budget=st.integers(1, 800),
    max_batch=st.integers(1, 12),
    max_new=st.integers(1, 16),
    beams=st.integers(1, 3),
    two_groups=st.booleans(),
)
def test_token_budget_is_never_exceeded(
    lengths: list[int], budget: int, max_batch: int, max_new: int, beams: int, two_groups: bool
) -> None:
    engine = FakeEngine()
    base = GenerationParams(max_new_tokens=max_new, num_beams=beams)
    other = GenerationParams(max_new_tokens=max_new, num_beams=beams, repetition_penalty=1.1)
    reqs = [
        GenRequest(i, " ".join(["w"] * n), other if two_groups and i % 2 else base)
        for i, n in enumerate(lengths)
    ]
    results = run(engine, reqs, BatchPolicy(token_budget=budget, max_batch_size=max_batch))
    assert all(r.error is None for r in results.values())
    by_key = {r.key: r for r in reqs}
    seen = [k for batch in engine.batches for k in batch]
    assert sorted(seen) == sorted(by_key)  # every item generated exactly once
    for batch in engine.batches:
        assert len(batch) <= max_batch
        assert len({by_key[k].params.batch_key() for k in batch}) == 1  # params never mixed
        if len(batch) > 1:  # an item alone over the budget still runs, alone
            widest = max(lengths[k] for k in batch) + max_new
            assert len(batch) * beams * widest <= budget


def test_batches_are_length_sorted_and_as_full_as_the_budget_allows() -> None:
    engine = FakeEngine()
    reqs = [
        GenRequest(i, " ".join(["w"] * n), GenerationParams(max_new_tokens=2))
        for i, n in enumerate([8, 1, 8, 1, 3, 3])
    ]
    run(engine, reqs, BatchPolicy(token_budget=20, max_batch_size=64))
    # Sorted: 1,1,3,3,8,8 (keys 1,3,4,5,0,2). Four short ones cost 4*(3+2) = 20 <= 20;
    # adding an 8 would cost 5*(8+2) = 50. The two long ones cost 2*(8+2) = 20.
    assert engine.batches == [[1, 3, 4, 5], [0, 2]]


def test_outputs_do_not_depend_on_batching(gpt2: Engine) -> None:
    params = GenerationParams(max_new_tokens=6)
    reqs = requests_for(PROMPTS, params)
    outputs = []
    for policy in (
        BatchPolicy(token_budget=100_000, max_batch_size=64),
        BatchPolicy(token_budget=60, max_batch_size=64),
        BatchPolicy(max_batch_size=3),
        BatchPolicy(max_batch_size=1),
    ):
        wrapped = Wrapped(gpt2)
        results = run(wrapped, reqs, policy)
        outputs.append({k: r.outputs for k, r in results.items()})
        assert all(r.completion_tokens == 6 for r in results.values())
        assert policy.max_batch_size > 1 or len(wrapped.calls) == len(PROMPTS)
    assert all(o == outputs[0] for o in outputs[1:])


def test_out_of_memory_halves_the_batch_and_remembers(gpt2: Engine) -> None:
    def oom_above_two(reqs: Sequence[GenRequest]) -> None:
        if len(reqs) > 2:
            raise OutOfMemory("simulated CUDA out of memory")

    wrapped = Wrapped(gpt2, fail=oom_above_two)
    short = GenerationParams(max_new_tokens=4)
    longer = GenerationParams(max_new_tokens=5)
    reqs = requests_for(PROMPTS, short) + [
        GenRequest(10 + i, p, longer) for i, p in enumerate(PROMPTS[:4])
    ]
    results = run(wrapped, reqs, BatchPolicy(token_budget=100_000))
    assert all(r.error is None for r in results.values())
    # 10 items -> OOM, 5 -> OOM, then pairs only; the second group starts at 2 right away.
    assert [len(c) for c in wrapped.calls] == [10, 5, 2, 2, 2, 2, 2, 2, 2]
    expected = run(gpt2, reqs, BatchPolicy())
    assert {k: r.outputs for k, r in results.items()} == {k: r.outputs for k, r in expected.items()}


def test_item_that_does_not_fit_alone_fails_with_out_of_memory(gpt2: Engine) -> None:
    def oom_for_item_2(reqs: Sequence[GenRequest]) -> None:
        if any(r.key == 2 for r in reqs):
            raise OutOfMemory("simulated")

    results = run(
        Wrapped(gpt2, fail=oom_for_item_2),
        requests_for(PROMPTS, GenerationParams(max_new_tokens=3)),
        BatchPolicy(),
    )
    assert results[2].error is not None and results[2].error.code == "out_of_memory"
    assert all(r.error is None and r.outputs for k, r in results.items() if k != 2)


def test_a_failing_item_is_isolated(gpt2: Engine) -> None:
    prompts = [*PROMPTS[:4], "", *PROMPTS[4:8]]  # "" cannot be generated for by GPT-2
    wrapped = Wrapped(gpt2)
    results = run(wrapped, requests_for(prompts, GenerationParams(max_new_tokens=3)), BatchPolicy())
    error = results[4].error
    assert error is not None and error.code == "generation_error"
    assert error.message.startswith("ValueError: empty prompt")
    assert all(r.error is None and r.completion_tokens == 3 for k, r in results.items() if k != 4)
    assert len(wrapped.calls) == 1 + len(prompts)  # the batch, then each item alone


def test_prompt_too_long_and_truncate(gpt2: Engine) -> None:
    long_prompt = "the weather changes quickly in the mountains " * 80
    n = gpt2.count_tokens([long_prompt])[0]
    assert n > 512
    params = GenerationParams(max_new_tokens=8)
    reqs = [
        GenRequest(0, "A", params),
        GenRequest(1, long_prompt, params),
        GenRequest(2, "A", GenerationParams(max_new_tokens=600)),
    ]
    results = run(gpt2, reqs, BatchPolicy())
    too_long = results[1].error
    assert too_long is not None and too_long.code == "prompt_too_long"
    assert too_long.message == (
        f"prompt has {n} tokens; with max_new_tokens 8 it exceeds the model's context of 512 "
        "tokens; shorten it, lower max_new_tokens, or submit with --truncate"
    )
    assert results[2].error is not None and results[2].error.code == "max_new_tokens_too_large"
    assert results[0].error is None and not results[0].truncated

    truncated = run(gpt2, reqs, BatchPolicy(truncate=True))
    assert truncated[1].error is None and truncated[1].truncated
    assert truncated[1].prompt_tokens <= 512 - 8 and truncated[1].completion_tokens == 8
    assert truncated[2].error is not None  # truncating cannot help max_new_tokens >= context
    assert truncated[0].outputs == results[0].outputs and not truncated[0].truncated


def test_rejected_items_come_first_and_counting_failures_are_isolated() -> None:
    class Picky(FakeEngine):
        def count_tokens(self, texts: Sequence[str]) -> list[int]:
            if any("BAD" in t for t in texts):
                raise UnicodeError("cannot tokenize")
            return super().count_tokens(texts)

    engine = Picky(max_context=10)
    reqs = [
        GenRequest(0, "ok", GenerationParams(max_new_tokens=2)),
        GenRequest(1, "BAD input", GenerationParams(max_new_tokens=2)),
        GenRequest(2, "w " * 9, GenerationParams(max_new_tokens=2)),
    ]
    batches = list(generate_all(engine, reqs, BatchPolicy()))
    assert [r.key for r in batches[0]] == [1, 2]
    assert [r.error.code if r.error else None for r in batches[0]] == [
        "generation_error",
        "prompt_too_long",
    ]
    assert (
        batches[0][0].error is not None
        and "UnicodeError: cannot tokenize" in batches[0][0].error.message
    )
    assert [[r.key for r in b] for b in batches[1:]] == [[0]]


def test_should_stop_is_checked_between_micro_batches() -> None:
    engine = FakeEngine()
    reqs = requests_for(PROMPTS, GenerationParams(max_new_tokens=2))
    done: list[GenResult] = []
    stream = generate_all(
        engine, reqs, BatchPolicy(max_batch_size=3), should_stop=lambda: len(done) >= 3
    )
    for batch in stream:
        done.extend(batch)
    assert len(done) == 3
    assert engine.batches == [[0, 5, 9]]  # the three shortest; nothing ran after the stop


@dataclass
class Recording:
    """A real engine that records how many characters each tokenised prompt had."""

    inner: HFEngine
    tokenized: list[int] = field(default_factory=list)

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    @property
    def max_token_chars(self) -> int | None:
        return self.inner.max_token_chars

    def tokenize(self, requests: Sequence[GenRequest]) -> list[list[int]]:
        self.tokenized.extend(len(r.prompt) for r in requests)
        return self.inner.tokenize(requests)

    def fit(self, request: GenRequest, max_tokens: int) -> GenRequest:
        self.tokenized.append(len(request.prompt))
        return self.inner.fit(request, max_tokens)

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        return self.inner.generate(requests)

    def close(self) -> None:
        pass


def test_huge_prompts_are_bounded_before_tokenising(gpt2: HFEngine) -> None:
    """A stored 3,000,000-character prompt (an older version, a raised limit) fails
    alone, judged by a prefix of (context + 1) x the longest token's characters; with
    --truncate it is cut by characters first. Nothing tokenises megabytes."""
    huge = "the weather changes quickly in the mountains " * 66_667
    assert len(huge) > 3_000_000
    cap = (512 + 1) * (gpt2.max_token_chars or 0)
    assert 0 < cap < 20_000
    params = GenerationParams(max_new_tokens=4)
    reqs = [GenRequest(0, "A", params), GenRequest(1, huge, params)]
    engine = Recording(gpt2)
    results = run(engine, reqs, BatchPolicy())
    error = results[1].error
    assert error is not None and error.code == "prompt_too_long"
    assert error.message.startswith("prompt has more than ")
    assert results[0].error is None
    assert max(engine.tokenized) <= cap

    engine.tokenized.clear()
    cut = run(engine, reqs, BatchPolicy(truncate=True))
    assert cut[1].error is None and cut[1].truncated and cut[1].prompt_tokens <= 512 - 4
    assert max(engine.tokenized) <= cap

    # Past the prompt limit nothing is tokenised at all.
    engine.tokenized.clear()
    limited = run(engine, reqs, BatchPolicy(max_prompt_chars=1000))
    error = limited[1].error
    assert error is not None and error.code == "prompt_too_long"
    assert "(GENQUEUE_MAX_PROMPT_CHARS)" in error.message
    assert engine.tokenized == [1]


def test_huge_prompt_for_a_model_without_a_context_length(t5: HFEngine) -> None:
    """T5 declares no context: the prompt limit alone bounds it; truncate keeps the
    start (the task prefix) of a seq2seq prompt."""
    assert t5.info.max_context is None
    params = GenerationParams(max_new_tokens=2)
    prompt = "summarize: " + "word " * 1000
    engine = Recording(t5)
    failed = run(engine, [GenRequest(0, prompt, params)], BatchPolicy(max_prompt_chars=2000))
    assert failed[0].error is not None and failed[0].error.code == "prompt_too_long"
    assert engine.tokenized == []
    cut = run(
        engine, [GenRequest(0, prompt, params)], BatchPolicy(max_prompt_chars=2000, truncate=True)
    )
    assert cut[0].error is None and cut[0].truncated
    assert engine.tokenized == [2000]


def test_long_conversation_with_truncate_drops_old_turns(gpt2: HFEngine) -> None:
    """A conversation far longer than the context, but whose last turns fit: truncate
    drops the oldest turns (no prefix stands for a conversation); without truncate it
    fails as too long."""
    messages = (
        {"role": "user", "content": "an old turn " * 2000},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "Say hi."},
    )
    assert sum(len(m["content"]) for m in messages) > 513 * (gpt2.max_token_chars or 0)
    flat = "\n".join(m["content"] for m in messages)
    req = GenRequest(0, flat, GenerationParams(max_new_tokens=4), messages=messages)
    cut = run(gpt2, [req], BatchPolicy(truncate=True))
    assert cut[0].error is None and cut[0].truncated
    assert cut[0].prompt_tokens < 100
    failed = run(gpt2, [req], BatchPolicy())
    assert failed[0].error is not None and failed[0].error.code == "prompt_too_long"


def test_variable_output_lengths_share_micro_batches() -> None:
    """An engine that takes max_new_tokens and stop per row (per_row_params, like hf)
    gets items differing only in them in one micro-batch, sorted by output limit; the
    budget counts the largest limit. An engine without it gets one group per limit."""

    @dataclass
    class PerRow(FakeEngine):
        per_row_params: tuple[str, ...] = ("max_new_tokens", "stop")

    def params(i: int) -> GenerationParams:
        return GenerationParams(max_new_tokens=[9, 2, 5, 2][i], stop=("x",) if i == 2 else ())

    reqs = [GenRequest(i, "w w", params(i)) for i in range(4)]
    per_row, plain = PerRow(), FakeEngine()
    run(per_row, reqs, BatchPolicy(token_budget=40, max_batch_size=64))
    run(plain, reqs, BatchPolicy(token_budget=40, max_batch_size=64))
    # Sorted by limit: keys 1, 3 (2), 2 (5), 0 (9); all four cost 4 * (2 + 9) = 44 > 40.
    assert per_row.batches == [[1, 3, 2], [0]]
    assert sorted(plain.batches) == [[0], [1, 3], [2]]
