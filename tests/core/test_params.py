"""Job-level GenerationParams validation: every message names the field and its range."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from genqueue.params import GenerationParams, derive_seed, describe_validation_error, item_seed


def describe(**params: Any) -> str:
    with pytest.raises(ValidationError) as err:
        GenerationParams(**params)
    return describe_validation_error(err.value)


def test_defaults_are_valid_and_greedy() -> None:
    params = GenerationParams()
    assert params.max_new_tokens == 64 and params.do_sample is False and params.stop == ()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"temperature": -0.5},
            "temperature: Input should be greater than 0 "
            "(got -0.5; allowed: 0 < temperature <= 100)",
        ),
        ({"temperature": 0}, "allowed: 0 < temperature <= 100"),
        ({"top_p": 0}, "top_p: Input should be greater than 0 (got 0; allowed: 0 < top_p <= 1)"),
        (
            {"top_p": 1.5},
            "top_p: Input should be less than or equal to 1 (got 1.5; allowed: 0 < top_p <= 1)",
        ),
        ({"max_new_tokens": 0}, "max_new_tokens: Input should be greater than or equal to 1"),
        ({"max_new_tokens": 10**6}, "allowed: 1 <= max_new_tokens <= 32768"),
        ({"num_beams": 0}, "allowed: 1 <= num_beams <= 64"),
        ({"top_k": -1}, "allowed: 0 <= top_k <= 1000000"),
        ({"repetition_penalty": 0}, "allowed: 0 < repetition_penalty <= 100"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"max_new_tokens": 1.5}, "max_new_tokens: Input should be a valid integer"),
        ({"max_new_tokens": "many"}, "(got 'many'; allowed: 1 <= max_new_tokens <= 32768)"),
        ({"stop": "###"}, "stop: expected a list of strings (got '###')"),
        ({"stop": [str(i) for i in range(17)]}, "stop: Tuple should have at most 16 items"),
        ({"do_sample": "maybe"}, "do_sample: expected true or false, got a string"),
    ],
)
def test_out_of_range_params_name_field_and_range(params: dict[str, Any], expected: str) -> None:
    assert expected in describe(**params)


def test_unknown_param_lists_allowed_names() -> None:
    message = describe(temprature=0.7)
    assert message.startswith("temprature: unknown parameter (allowed: max_new_tokens, ")
    assert "temperature" in message and "top_p" in message


@pytest.mark.parametrize("name", ["max_new_tokens", "temperature", "top_k", "seed"])
def test_booleans_are_not_numbers(name: str) -> None:
    # Lax pydantic would read `true` as 1 and silently generate one token.
    assert f"{name}: expected a number, got a boolean" in describe(**{name: True})


@pytest.mark.parametrize("name", ["max_new_tokens", "temperature", "top_k", "seed"])
def test_strings_are_not_numbers(name: str) -> None:
    # Lax pydantic would read "5" as 5: JSON input carries numbers as numbers, and a
    # quoted one is a mistake in the generating script worth reporting.
    assert f"{name}: expected a number, got a string (got '5'" in describe(**{name: "5"})


@pytest.mark.parametrize("value", ["false", "yes", 1, 0, None])
@pytest.mark.parametrize("name", ["do_sample", "logprobs", "json_object", "early_stopping"])
def test_switches_take_only_true_or_false(name: str, value: Any) -> None:
    # Lax pydantic would read "false" as false and 1 as true.
    kind = {str: "string", int: "number", type(None): "null"}[type(value)]
    assert f"{name}: expected true or false, got a {kind}" in describe(**{name: value})


def test_real_numbers_and_switches_are_accepted() -> None:
    params = GenerationParams.model_validate(
        {"temperature": 0.5, "max_new_tokens": 12, "top_p": 1, "do_sample": True}
    )
    assert (params.max_new_tokens, params.temperature, params.do_sample) == (12, 0.5, True)


def test_cross_field_errors_name_both_fields_without_dumping_the_input() -> None:
    assert describe(min_new_tokens=100, max_new_tokens=10) == (
        "min_new_tokens (100) must be <= max_new_tokens (10)"
    )
    message = describe(num_return_sequences=3)
    assert message.startswith("num_return_sequences (3) needs do_sample=true or num_beams")
    assert describe(stop=["###", ""]) == "stop strings must be non-empty"


def test_several_problems_are_all_reported() -> None:
    message = describe(temperature=-1, top_p=2, bogus=1)
    assert message.count("; ") >= 2
    assert "temperature:" in message and "top_p:" in message and "bogus:" in message


def test_long_inputs_are_shortened_in_messages() -> None:
    message = describe(stop="x" * 10_000)
    assert len(message) < 200 and message.endswith("...)")


def test_merged_validates_overrides_against_the_job_params() -> None:
    base = GenerationParams(max_new_tokens=10)
    assert base.merged(None) is base and base.merged({}) is base
    assert base.merged({"temperature": 0.5}).temperature == 0.5
    with pytest.raises(ValidationError) as err:
        base.merged({"min_new_tokens": 20})
    assert describe_validation_error(err.value) == (
        "min_new_tokens (20) must be <= max_new_tokens (10)"
    )


def test_an_items_seed_is_its_own_else_derived_from_the_job_seed_and_its_index() -> None:
    assert item_seed(7, 123, 4) == 123  # the item's own params.seed wins
    assert item_seed(None, None, 4) is None  # nothing to reproduce
    derived = item_seed(7, None, 4)
    assert derived == derive_seed(7, 4) and 0 <= derived < 2**63
    # Stable across processes and versions (not hash()), distinct per index and seed.
    assert derived == 2878643647184771376
    assert len({item_seed(7, None, i) for i in range(1000)}) == 1000
    assert item_seed(8, None, 4) != derived
