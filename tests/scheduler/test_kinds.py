"""Job kinds: required fields, default prompts, templates, and the messages users see."""

from __future__ import annotations

from typing import Any

import pytest

from genqueue.params import GenerationParams
from genqueue.scheduler.errors import RecordError, SpecError, SubmissionError
from genqueue.scheduler.kinds import KINDS, JobInputSpec, render_prompt, validate_spec


def render(kind: str, record: dict[str, Any], **spec: Any) -> str:
    job = JobInputSpec(kind=kind, **spec)
    validate_spec(job)
    return render_prompt(job, record)


def _missing(kind: str, record: dict[str, Any]) -> str:
    with pytest.raises(RecordError, match="missing required field") as exc:
        render(kind, record)
    return str(exc.value)


def test_kinds_and_their_fields() -> None:
    assert KINDS == ("generate", "summarize", "translate", "qa", "chat")
    # Required fields: a record without them is refused, naming the field.
    assert "'prompt'" in _missing("generate", {"text": "x"})
    assert "'text'" in _missing("summarize", {"prompt": "x"})
    assert "'text'" in _missing("translate", {"target_lang": "German"})
    assert "'target_lang'" in _missing("translate", {"text": "x"})
    assert "'question'" in _missing("qa", {"context": "x"})
    # Optional fields: used when given, left out of the prompt when not.
    assert render("translate", {"text": "x", "target_lang": "German"}) == ("translate to German: x")
    assert "English" in render(
        "translate", {"text": "x", "target_lang": "German", "source_lang": "English"}
    )
    assert render("qa", {"question": "Why?"}) == "question: Why?"
    assert render("qa", {"question": "Why?", "context": "C"}) == "question: Why? context: C"


@pytest.mark.parametrize(
    ("kind", "record", "expected"),
    [
        ("generate", {"prompt": "Once upon a time"}, "Once upon a time"),
        ("summarize", {"text": "A long text."}, "summarize: A long text."),
        (
            "translate",
            {"text": "Hello", "target_lang": "German", "source_lang": "English"},
            "translate English to German: Hello",
        ),
        ("translate", {"text": "Hello", "target_lang": "German"}, "translate to German: Hello"),
        (
            "qa",
            {"question": "Who?", "context": "Ada wrote it."},
            "question: Who? context: Ada wrote it.",
        ),
        ("qa", {"question": "Who?"}, "question: Who?"),
        # A blank optional field means "not given", not "context: ".
        ("qa", {"question": "Who?", "context": "  "}, "question: Who?"),
        ("qa", {"question": "Who?", "context": None}, "question: Who?"),
    ],
)
def test_default_prompts(kind: str, record: dict[str, Any], expected: str) -> None:
    assert render(kind, record) == expected


def test_values_are_inserted_verbatim_even_with_braces() -> None:
    assert render("generate", {"prompt": "f(x) = {x} {0} {a.b}"}) == "f(x) = {x} {0} {a.b}"
    assert render("summarize", {"text": "  keep spacing\n"}) == "summarize:   keep spacing\n"


def test_unknown_fields_in_a_record_are_ignored() -> None:
    assert render("generate", {"prompt": "p", "source": "web", "score": 3}) == "p"


def test_translate_languages_come_from_job_defaults_record_wins() -> None:
    defaults = {"target_lang": "German", "source_lang": "English"}
    assert render("translate", {"text": "Hi"}, defaults=defaults) == (
        "translate English to German: Hi"
    )
    record = {"text": "Hi", "target_lang": "French"}
    assert render("translate", record, defaults=defaults) == "translate English to French: Hi"
    # A blank record value falls back to the default (an empty CSV cell is not a language).
    record = {"text": "Hi", "target_lang": ""}
    assert render("translate", record, defaults=defaults) == "translate English to German: Hi"


@pytest.mark.parametrize(
    ("kind", "record", "field"),
    [
        ("generate", {"text": "wrong field"}, "prompt"),
        ("summarize", {"prompt": "x"}, "text"),
        ("translate", {"text": "Hi"}, "target_lang"),
        ("translate", {"target_lang": "German"}, "text"),
        ("qa", {"context": "c"}, "question"),
    ],
)
def test_missing_required_field_names_it_and_lists_the_record(
    kind: str, record: dict[str, Any], field: str
) -> None:
    with pytest.raises(RecordError) as err:
        render(kind, record)
    message = str(err.value)
    assert f"missing required field {field!r} for kind {kind!r}" in message
    assert "the record has: " + ", ".join(record) in message


def test_a_null_field_is_called_null_not_missing() -> None:
    with pytest.raises(RecordError, match="field 'text' is null; kind 'summarize' needs text"):
        render("summarize", {"text": None})
    with pytest.raises(RecordError, match=r"template field \{x\} is null in the record"):
        render("generate", {"x": None}, template="V={x}")


def test_missing_target_lang_suggests_a_job_default() -> None:
    with pytest.raises(RecordError, match="or set it as a job default"):
        render("translate", {"text": "Hi"})


@pytest.mark.parametrize("value", ["", "   ", "\n\t"])
def test_empty_required_text_is_rejected(value: str) -> None:
    with pytest.raises(RecordError, match="field 'text' is empty"):
        render("summarize", {"text": value})


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(42, "number"), (1.5, "number"), (True, "boolean"), (["a"], "array"), ({"a": 1}, "object")],
)
def test_non_string_text_field_is_rejected(value: Any, type_name: str) -> None:
    with pytest.raises(RecordError) as err:
        render("generate", {"prompt": value})
    assert f"field 'prompt' must be a string, got {type_name}" in str(err.value)


def test_non_string_optional_field_is_rejected_too() -> None:
    with pytest.raises(RecordError, match="field 'context' must be a string, got number"):
        render("qa", {"question": "q", "context": 7})


def test_record_error_belongs_to_the_submission_family() -> None:
    assert issubclass(RecordError, SubmissionError)
    assert issubclass(SpecError, SubmissionError)


# -- templates ---------------------------------------------------------------------------


def test_template_over_custom_fields_with_defaults() -> None:
    template = "You are a {role}. Review this {language} code:\n{code}\nScore: {score}/{max}"
    record = {"code": "print(1)", "score": 7, "max": 10.5, "role": "senior reviewer"}
    prompt = render("generate", record, template=template, defaults={"language": "Python"})
    assert prompt == (
        "You are a senior reviewer. Review this Python code:\nprint(1)\nScore: 7/10.5"
    )


def test_template_replaces_the_kinds_required_fields() -> None:
    # translate normally needs text + target_lang; with a template only its fields count.
    prompt = render("translate", {"sentence": "Hallo"}, template="English for: {sentence}")
    assert prompt == "English for: Hallo"


def test_template_record_value_wins_over_default() -> None:
    spec = {"template": "{greeting}, {name}", "defaults": {"greeting": "Hello", "name": "you"}}
    assert render("generate", {"name": "Ada"}, **spec) == "Hello, Ada"


def test_template_formats_booleans_as_written_and_supports_format_specs() -> None:
    record = {"flag": True, "x": 3.14159, "s": "ab"}
    template = "{flag} {x:.2f} [{s:>4}] {s!r} {{literal}}"
    assert render("generate", record, template=template) == "true 3.14 [  ab] 'ab' {literal}"


def test_unknown_template_field_lists_record_fields() -> None:
    record = {"a": "1", "b": "2", "c": "3"}
    with pytest.raises(RecordError) as err:
        render("generate", record, template="{a} {x}")
    assert str(err.value) == "template field {x} is not in the record; the record has: a, b, c"


def test_unknown_template_field_mentions_job_defaults() -> None:
    with pytest.raises(RecordError, match=r"\{x\} is not in the record; .*job defaults: lang"):
        render("generate", {"a": "1"}, template="{x}", defaults={"lang": "de"})


def test_template_field_of_wrong_type_is_rejected() -> None:
    with pytest.raises(RecordError, match=r"template field \{tags\} must be text or a number"):
        render("generate", {"tags": ["a", "b"]}, template="Tags: {tags}")


def test_template_format_spec_mismatch_is_a_record_error() -> None:
    with pytest.raises(RecordError, match=r"cannot be formatted with ':d'"):
        render("generate", {"n": "seven"}, template="{n:d}")


def test_template_rendering_to_blank_is_rejected() -> None:
    with pytest.raises(RecordError, match="rendered from the template is empty"):
        render("generate", {"a": "abc"}, template=" {a:.0}")  # precision 0: no text


@pytest.mark.parametrize("value", ["", " ", "\t\n"])
def test_an_empty_template_field_is_rejected(value: str) -> None:
    # A blank review cell would otherwise be labelled as if it were a review.
    with pytest.raises(RecordError) as err:
        render("generate", {"review": value}, template="Sentiment of: {review}")
    assert str(err.value) == (
        "template field {review} is empty in the record; give it text, or leave the record out"
    )


def test_a_template_names_the_fields_it_needs_in_order() -> None:
    with pytest.raises(RecordError, match=r"template field \{b\} is not in the record"):
        render("generate", {"a": "x"}, template="{b} {a} {b} {{c}}")
    assert render("generate", {"a": "1", "b": "2"}, template="{b} {a} {b} {{c}}") == "2 1 2 {c}"


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("Summarize {text", "expected '}' before end of string"),
        ("Summarize text}", "Single '}' encountered"),
        ("Answer {} now", "positional field {} is not allowed"),
        ("Answer {0} now", "positional field {0} is not allowed"),
        ("{record.text}", "attribute or index access"),
        ("{items[0]}", "attribute or index access"),
        ("{ text }", "has spaces around its name; write {text}"),
        ("{text:{width}}", "nested fields in a format spec"),
        ("{text!x}", "unknown conversion !x"),
        ("", "template is empty"),
        ("   ", "template is empty"),
    ],
)
def test_invalid_template_syntax_is_a_spec_error(template: str, fragment: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_spec(JobInputSpec(kind="generate", template=template))
    assert fragment in str(err.value)


def test_literal_braces_hint_in_syntax_errors() -> None:
    with pytest.raises(SpecError, match=r"write \{\{ and \}\} for literal braces"):
        validate_spec(JobInputSpec(kind="generate", template="JSON: {"))


def test_unknown_kind_lists_allowed_kinds() -> None:
    with pytest.raises(SpecError) as err:
        validate_spec(JobInputSpec(kind="summarise"))
    assert str(err.value) == (
        "unknown job kind 'summarise'; allowed kinds: generate, summarize, translate, qa, chat"
    )
    with pytest.raises(SpecError, match="unknown job kind"):
        render_prompt(JobInputSpec(kind="dialogue"), {"prompt": "x"})


@pytest.mark.parametrize(
    ("defaults", "fragment"),
    [
        ({"target_lang": 3}, "defaults: 'target_lang' must be a string, got number"),
        ({"custom_id": "x"}, "'custom_id' is set per record"),
        ({"params": "{}"}, "'params' is set per record"),
        ({"": "x"}, "field names must be non-empty strings"),
    ],
)
def test_invalid_defaults_are_spec_errors(defaults: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_spec(JobInputSpec(kind="translate", defaults=defaults))
    assert fragment in str(err.value)


def test_spec_defaults_are_independent_per_instance() -> None:
    first, second = JobInputSpec(kind="generate"), JobInputSpec(kind="generate")
    assert first.defaults == {} and first.defaults is not second.defaults
    assert first.base_params == GenerationParams()
