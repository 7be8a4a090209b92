"""Hostile records handed to the Python client as objects, not files: the same clear
errors as the CLI's, and the client's settings carry the limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from genqueue.client import Client
from genqueue.scheduler.errors import InputError, InputFormatError
from genqueue.settings import Settings


def client(tmp_path: Path, **limits: Any) -> Client:
    return Client(settings=Settings(database_url=f"sqlite:///{tmp_path / 'db'}", **limits))


def test_records_nested_past_what_json_can_write(tmp_path: Path) -> None:
    deep: Any = 1
    for _ in range(100_000):
        deep = {"a": deep}
    gq = client(tmp_path)
    with pytest.raises(InputFormatError, match="record 2: nested too deeply"):
        gq.submit([{"prompt": "ok"}, {"prompt": "x", "meta": deep}], model="tiny-gpt2")


def test_records_that_are_not_json(tmp_path: Path) -> None:
    gq = client(tmp_path)
    with pytest.raises(InputFormatError, match="record 1: cannot be written as JSON"):
        gq.submit([{"prompt": object()}], model="tiny-gpt2")


def test_the_client_settings_carry_the_limits(tmp_path: Path) -> None:
    gq = client(tmp_path, max_field_chars=100)
    with pytest.raises(InputError, match=r"line 2: field 'prompt' is 101 characters long"):
        gq.submit([{"prompt": "ok"}, {"prompt": "x" * 101}], model="tiny-gpt2")
    surrogate = client(tmp_path)
    with pytest.raises(
        InputError, match="line 1: field 'prompt' contains an unpaired UTF-16 surrogate"
    ):
        surrogate.submit([{"prompt": "half \ud800"}], model="tiny-gpt2")
