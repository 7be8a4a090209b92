"""The CLI's last line of defence: genqueue's own errors print one line and exit 2;
anything unexpected prints one line too and exits 1, with the traceback only under
--debug; options that can be checked are checked before any work starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GQ = [sys.executable, "-m", "genqueue.cli"]
#: Nothing listens on port 1: connecting fails with a driver error genqueue does not own.
UNREACHABLE_DB = "postgresql://nobody@127.0.0.1:1/none"


def gq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GQ, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def junk_db(tmp_path: Path) -> str:
    """A file that is not a database: SQLite's driver fails in a way genqueue does not own."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database file, not even close " * 20)
    return f"sqlite:///{path}"


def test_unexpected_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    proc = gq("jobs", "--database-url", junk_db(tmp_path))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: unexpected DatabaseError: ")
    assert "not a database" in lines[0]
    assert lines[0].endswith("(run again with --debug for the traceback)")


def test_debug_shows_the_traceback_anywhere_on_the_line(tmp_path: Path) -> None:
    url = junk_db(tmp_path)
    for args in (["--debug", "jobs"], ["jobs", "--debug"]):
        proc = gq(*args, "--database-url", url)
        assert proc.returncode == 1
        assert "Traceback (most recent call last)" in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: unexpected")
    proc = gq("jobs", "--database-url", url, env={"GENQUEUE_DEBUG": "1"})
    assert "Traceback" in proc.stderr


def test_a_database_that_cannot_be_reached_or_named_says_what_to_check(tmp_path: Path) -> None:
    proc = gq("jobs", "--database-url", UNREACHABLE_DB)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: cannot use the database: ") and "Connection refused" in line
    assert "GENQUEUE_DATABASE_URL" in line
    # A URL without its scheme is refused, not taken for a SQLite file to create.
    proc = subprocess.run(
        [*GQ, "jobs", "--database-url", "postgres@127.0.0.1/db"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "is not a database URL" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_genqueue_errors_keep_their_message_and_brackets(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "x"}\n')
    # Square brackets in a message are text, not terminal markup.
    proc = gq(
        "submit",
        str(src),
        "--model",
        "tiny-gpt2",
        "--template",
        "{x[0]}",
        "--database-url",
        f"sqlite:///{tmp_path / 'db.sqlite'}",
    )
    assert proc.returncode == 2
    assert "{x[0]} uses attribute or index access" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_outputs_fail_before_any_work(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "x"}\n')
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    state = tmp_path / "state"
    folder = tmp_path / "looks-like-a-file.jsonl"
    folder.mkdir()
    for args, expected in (
        (["-o", str(folder)], "is a directory; give a file name"),
        (["-o", str(blocker / "out.jsonl")], "is a file, not a folder"),
        (
            ["--results-format", "openai", "--errors", str(blocker / "e.jsonl")],
            "--errors",
        ),
        (["-o", str(tmp_path / "x.out")], "cannot tell the format of"),
    ):
        proc = gq("run", str(src), "--model", "tiny-gpt2", "--state-dir", str(state), *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert expected in proc.stderr, proc.stderr
        assert not state.exists()  # nothing started: no embedded database or Redis
