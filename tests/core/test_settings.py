"""Settings come from GENQUEUE_* variables, and a child process gets exactly the
settings of the process that started it."""

from __future__ import annotations

import pytest

from genqueue.settings import Settings


def test_a_childs_environment_carries_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = Settings(
        database_url="sqlite:////tmp/x.db",
        broker_url="redis://h:6379/2",
        lease_seconds=2.5,
        max_attempts=7,
        chunk_size=16,
        prefetch=False,
        max_batch_size=3,
    )
    env = parent.child_env()
    assert env["GENQUEUE_LEASE_SECONDS"] == "2.5" and env["GENQUEUE_PREFETCH"] == "false"
    assert "GENQUEUE_CHUNK_SIZE" in env
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"GENQUEUE_{name.upper()}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings() == parent  # what the child reads back


def test_unset_settings_stay_unset_in_a_child() -> None:
    unset = ("database_url", "broker_url", "chunk_size", "files_dir")
    env = Settings(**dict.fromkeys(unset)).child_env()
    assert not {f"GENQUEUE_{n.upper()}" for n in unset} & set(env)
    assert set(env) == {f"GENQUEUE_{n.upper()}" for n in Settings.model_fields if n not in unset}
