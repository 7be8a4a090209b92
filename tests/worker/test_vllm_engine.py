"""The vllm engine's parts that need no vLLM: what it refuses, and its message when
vLLM is not installed (the engine itself is tested in tests/integration/test_vllm.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from genqueue.params import GenerationParams
from genqueue.worker.engines import ENGINE_NAMES, load_engine
from genqueue.worker.engines.vllm import unsupported
from genqueue.worker.errors import EngineError
from genqueue.workeropts import WorkerOptions


def test_without_vllm_the_engine_says_how_to_install_it(tiny_gpt2_dir: Path) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert "vllm" in ENGINE_NAMES
    with pytest.raises(EngineError, match=r"install genqueue\[vllm\]"):
        load_engine(WorkerOptions(model=str(tiny_gpt2_dir), engine="vllm"))


def test_vllm_refuses_int8_quantisation_before_loading_anything(tiny_gpt2_dir: Path) -> None:
    with pytest.raises(EngineError, match=r"--quantize int8 works with the hf engine only"):
        load_engine(WorkerOptions(model=str(tiny_gpt2_dir), engine="vllm", quantize="int8"))


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"num_beams": 2}, "beam search"),
        ({"no_repeat_ngram_size": 3}, "no_repeat_ngram_size"),
        ({"do_sample": True, "typical_p": 0.5}, "typical_p"),
        ({"choices": ["a", "b"], "score_choices": True}, "score_choices"),
    ],
)
def test_params_vllm_cannot_honour_are_refused_by_name(
    params: dict[str, object], named: str
) -> None:
    problem = unsupported(GenerationParams.model_validate(params))
    assert problem is not None and named in problem and "--engine hf" in problem


def test_params_vllm_maps_are_accepted() -> None:
    params = GenerationParams(
        do_sample=True,
        num_return_sequences=3,
        top_k=5,
        top_p=0.9,
        min_p=0.1,
        stop=("x",),
        logprobs=True,
        top_logprobs=2,
        presence_penalty=0.5,
        repetition_penalty=1.1,
    )
    assert unsupported(params) is None
    assert unsupported(GenerationParams(json_schema={"type": "object"})) is None


def test_an_engine_that_batches_continuously_gets_whole_calls() -> None:
    """`continuous_batch` engines get that many requests per call, without a token
    budget; others keep the worker's micro-batch settings."""
    import sys
    from types import SimpleNamespace

    from genqueue.worker.batching import BatchPolicy, for_engine

    policy = BatchPolicy(token_budget=1000, max_batch_size=8, truncate=True)
    assert for_engine(policy, SimpleNamespace()) == policy  # type: ignore[arg-type]
    got = for_engine(policy, SimpleNamespace(continuous_batch=300))  # type: ignore[arg-type]
    assert got.max_batch_size == 300 and got.token_budget == sys.maxsize and got.truncate
