"""Conversations: what a chat record's `messages` may hold, and a kind's prompt as the
user turn of one (for instruction-tuned models, `--chat`).

Messages are validated at submission and stored with the item; the worker renders them
with the model's chat template (or the job's own) and tokenises the result once.
"""

from __future__ import annotations

from typing import Any

from genqueue.errors import type_name
from genqueue.scheduler.errors import RecordError

#: Roles a message may have. OpenAI's "developer" role is a system message.
ROLES = ("system", "user", "assistant")
_ALIASES = {"developer": "system"}
#: Past this, a conversation is a mistake (or an attack), not a dialogue.
MAX_MESSAGES = 1000

Message = dict[str, str]


def record_messages(
    value: Any, *, system: str | None = None, where: str = "messages"
) -> list[Message]:
    """A record's conversation as [{"role", "content"}], validated; `system` is added
    first when the conversation has no system message. Raises RecordError saying which
    message is wrong and how."""
    if value is None:
        raise RecordError(
            "missing required field 'messages' for kind 'chat'; give a list such as "
            '[{"role": "user", "content": "Hello"}]'
        )
    if not isinstance(value, list):
        raise RecordError(
            f"{where} must be a list of {{role, content}} objects, got {type_name(value)}"
        )
    if not value:
        raise RecordError(f"{where} is empty; a conversation needs a message (the user's turn)")
    if len(value) > MAX_MESSAGES:
        raise RecordError(f"{where} has {len(value)} entries; at most {MAX_MESSAGES} allowed")
    out = [_message(f"{where}[{i}]", m) for i, m in enumerate(value)]
    if all(m["role"] == "system" for m in out):
        raise RecordError(f"{where} has no user or assistant message; add the user's turn")
    if system and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    return out


def as_conversation(prompt: str, system: str | None = None) -> list[Message]:
    """A kind's rendered prompt as the user turn of a conversation (with `system`)."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}]


def flatten(messages: list[Message]) -> str:
    """A plain-text view of a conversation (for planning by length, and display)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _message(where: str, m: Any) -> Message:
    if not isinstance(m, dict):
        raise RecordError(f"{where} must be an object with role and content, got {type_name(m)}")
    role = m.get("role")
    if not isinstance(role, str) or _ALIASES.get(role, role) not in ROLES:
        raise RecordError(
            f"{where}.role is {role!r}; allowed roles: {', '.join(ROLES)}"
            + (" (tool messages are not supported)" if role in ("tool", "function") else "")
        )
    unknown = sorted(set(m) - {"role", "content", "name"})
    if unknown:
        raise RecordError(
            f"{where} has unsupported field(s) {', '.join(unknown)}; a message is "
            "{role, content} (tool calls and audio are not supported)"
        )
    return {"role": _ALIASES.get(role, role), "content": _content(where, m.get("content"))}


def _content(where: str, content: Any) -> str:
    """Text content: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise RecordError(
                    f"{where}.content[{j}] is not a text part ({kind or type_name(part)}); "
                    'only {"type": "text", "text": ...} parts are supported'
                )
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise RecordError(f"{where}.content must be text, got {type_name(content)}")
    if not content.strip():
        raise RecordError(f"{where}.content is empty")
    return content
