"""Conversations: what `messages` may hold, and a kind's prompt as the user turn."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from genqueue.scheduler.chat import MAX_MESSAGES, as_conversation, flatten, record_messages
from genqueue.scheduler.errors import RecordError, SpecError
from genqueue.scheduler.kinds import JobInputSpec, validate_spec
from tests.scheduler.inputs_helpers import good, items, jsonl, problems


def test_a_multi_turn_conversation_is_kept_as_it_is() -> None:
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "How "}, {"type": "text", "text": "are you?"}],
        },
    ]
    out = record_messages(turns, system="ignored: it has one")
    assert out == [*turns[:3], {"role": "user", "content": "How are you?"}]
    assert flatten(out).splitlines()[0] == "system: Be brief."


def test_a_system_message_is_added_where_there_is_none() -> None:
    out = record_messages(
        [{"role": "developer", "content": "Rules"}, {"role": "user", "content": "x"}]
    )
    assert out[0] == {"role": "system", "content": "Rules"}  # OpenAI's developer role
    added = record_messages([{"role": "user", "content": "x"}], system="Be kind")
    assert added == [{"role": "system", "content": "Be kind"}, {"role": "user", "content": "x"}]
    assert as_conversation("Summarize: x", "Be kind") == [
        added[0],
        {"role": "user", "content": "Summarize: x"},
    ]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "missing required field 'messages'"),
        ("hello", "must be a list of {role, content} objects, got string"),
        ([], "is empty"),
        ([{"role": "bot", "content": "x"}], "messages[0].role is 'bot'; allowed roles"),
        ([{"role": "tool", "content": "x"}], "tool messages are not supported"),
        ([{"role": "user", "content": "  "}], "messages[0].content is empty"),
        ([{"role": "user", "content": 3}], "messages[0].content must be text, got number"),
        ([{"role": "user"}], "messages[0].content must be text, got null"),
        ([{"role": "user", "content": "x", "tool_calls": []}], "unsupported field(s) tool_calls"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "content[0] is not a text part"),
        (["hi"], "messages[0] must be an object"),
        ([{"role": "system", "content": "only rules"}], "no user or assistant message"),
        ([{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1), "at most 1000 allowed"),
    ],
)
def test_invalid_messages_say_which_and_why(value: Any, fragment: str) -> None:
    with pytest.raises(RecordError) as exc:
        record_messages(value)
    assert fragment in str(exc.value)


def test_chat_records_are_line_numbered_problems_like_the_rest() -> None:
    spec = JobInputSpec(kind="chat", system="S")
    data = jsonl(
        {"messages": [{"role": "user", "content": "one"}]},
        {"messages": "two"},
        {"prompt": "three"},
        {"messages": [{"role": "assistant", "content": "four"}, {"role": "user", "content": ""}]},
    )
    results = items(io.BytesIO(data), spec)
    assert problems(results) == {
        2: "messages must be a list of {role, content} objects, got string",
        3: "missing required field 'messages' for kind 'chat'; give a list such as "
        '[{"role": "user", "content": "Hello"}]',
        4: "messages[1].content is empty",
    }
    [ok] = good(results)
    assert (
        ok.messages
        == [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "one"},
        ]
        and ok.prompt == "system: S\nuser: one"
    )


def test_any_kind_through_the_chat_template_and_conversations_from_csv() -> None:
    spec = JobInputSpec(kind="summarize", chat=True, system="Be brief")
    [item] = good(items(io.BytesIO(jsonl({"text": "A long text."})), spec))
    assert item.messages == as_conversation("summarize: A long text.", "Be brief")
    csv = (
        b'messages\n"'
        + json.dumps([{"role": "user", "content": "hi"}]).replace('"', '""').encode()
        + b'"\n'
    )
    [row] = good(items(io.BytesIO(csv), JobInputSpec(kind="chat"), fmt="csv"))
    assert row.messages == [{"role": "user", "content": "hi"}]


def test_a_chat_job_takes_no_template() -> None:
    with pytest.raises(SpecError, match="kind 'chat' takes each record's messages"):
        validate_spec(JobInputSpec(kind="chat", template="{x}"))
    with pytest.raises(SpecError, match="system"):
        validate_spec(JobInputSpec(kind="chat", system=" "))
