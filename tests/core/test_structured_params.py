"""Structured-output, log-probability and post-processing params: validated at
submission with messages that name the field or the schema keyword."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from genqueue import postprocess
from genqueue.params import GenerationParams, describe_validation_error


def problem(**kw: Any) -> str:
    with pytest.raises(ValidationError) as exc:
        GenerationParams(**kw)
    return describe_validation_error(exc.value)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"json_schema": {"type": "object", "if": {"type": "string"}}}, "keyword(s): if"),
        ({"json_schema": {"type": "string", "format": "uri-reference"}}, "format: uri-reference"),
        ({"json_schema": {"type": "nonsense"}}, "json_schema: cannot be compiled"),
        ({"regex": "(unclosed"}, "regex: cannot be compiled"),
        ({"json_schema": {"enum": ["x" * 70000]}}, "at most 65536"),
        ({"choices": ["a"], "regex": "b"}, "give one of choices, regex"),
        ({"choices": ["a", "a"]}, "choices has a label twice"),
        ({"choices": [""]}, "non-empty labels"),
        ({"score_choices": True}, "score_choices needs choices"),
        ({"regex": "a", "num_beams": 2}, "regex cannot be combined with beam search"),
        ({"json_object": True, "stop": ["x"]}, "json_object cannot be combined with stop"),
        ({"choices": ["a"], "min_new_tokens": 2}, "choices cannot be combined with min_new"),
        ({"top_logprobs": 3}, "top_logprobs needs logprobs=true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs: Input should be less than"),
        ({"logprobs": True, "num_beams": 2}, "logprobs cannot be combined with beam search"),
        ({"presence_penalty": 2.5}, "-2 <= presence_penalty <= 2"),
        ({"frequency_penalty": -3}, "-2 <= frequency_penalty <= 2"),
        ({"min_p": 1.5}, "0 <= min_p <= 1"),
        ({"typical_p": 0}, "0 < typical_p <= 1"),
        ({"length_penalty": 11}, "-10 <= length_penalty <= 10"),
        ({"postprocess": "trim,shout"}, "unknown post-processing step 'shout'"),
        ({"postprocess": ["sentences"]}, "step sentences needs a number >= 1"),
        ({"postprocess": ["trim:3"]}, "step trim takes no argument"),
    ],
)
def test_bad_params_are_refused_naming_what_is_wrong(params: dict[str, Any], message: str) -> None:
    assert message in problem(**params)


def test_an_items_constraint_replaces_the_jobs() -> None:
    job = GenerationParams(choices=("a", "b"), score_choices=True)
    item = job.merged({"regex": "[0-9]+"})
    assert (item.choices, item.regex, item.score_choices) == ((), "[0-9]+", False)
    assert job.merged({"choices": ["x", "y"]}).score_choices is True
    assert job.merged({"temperature": 0.5}).choices == ("a", "b")
    # The constraint is per row: items with different constraints batch together.
    assert item.batch_key() == job.batch_key()
    assert GenerationParams(postprocess="trim, sentences:2").postprocess == ("trim", "sentences:2")


def test_checking_a_grammar_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from genqueue.params import GenerationParams\n"
        "GenerationParams(json_schema={'type': 'object', 'required': ['a']})\n"
        "GenerationParams(choices=('x', 'y'))\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]\n"
        "assert not bad, bad[:5]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize(
    ("steps", "text", "expected"),
    [
        (("trim",), "  hi there \n", "hi there"),
        (("first_line",), "\n\n  first \nsecond", "  first "),
        (("trim", "first_line"), "\n first\nsecond", "first"),
        (("sentences:2",), "One. Two! Three? Four", "One. Two!"),
        (
            ("dedupe_sentences",),
            "Good film. Good film! It was fine. good  film.",
            "Good film. It was fine.",
        ),
        # A dot inside a number, a name or an abbreviation ends no sentence: nothing of
        # the text is lost (4.5 once came out as "5").
        (("sentences:1",), "Score: 4.5", "Score: 4.5"),
        (("sentences:1",), "The price is 3.50 dollars. Cheap.", "The price is 3.50 dollars."),
        (("sentences:1",), "Visit example.com", "Visit example.com"),
        (
            ("dedupe_sentences",),
            "3.14 is pi. Version 2.0 out. ok",
            "3.14 is pi. Version 2.0 out. ok",
        ),
        (("dedupe_sentences",), "v1.2 is out. v1.2 is out. Ends", "v1.2 is out. Ends"),
        (("collapse_loops",), "I like it a lot a lot a lot really", "I like it a lot really"),
        (("collapse_loops",), "the the the the end", "the end"),
        (("collapse_loops",), "very very good", "very very good"),
    ],
)
def test_postprocess_steps(steps: tuple[str, ...], text: str, expected: str) -> None:
    assert postprocess.apply(steps, text) == expected


def test_every_step_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name in postprocess.STEPS:
        assert f"`{name}" in readme, name
