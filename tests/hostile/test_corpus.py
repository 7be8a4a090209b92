"""Every case of the hostile-input corpus (corpus.py) through `genqueue submit`, as a
user runs it: each ends within 10 s with a clear message naming the line, nothing is
stored, and the submitting process's peak memory stays within 2x the line limit plus a
constant over what a one-line submission takes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from genqueue.settings import InputLimits
from tests.hostile import corpus

#: Every case ends within this (the issue's target).
WALL_LIMIT_S = 10.0
#: Peak RSS may exceed a one-line submission's by 2 x the line limit plus this.
RSS_CONSTANT = 64 * corpus.MiB
LINE_LIMIT = InputLimits().max_record_bytes


#: Runs a command and prints its peak RSS (KiB) on the last line of stderr. A child
#: forked from the test process would count the test process's memory too (Linux keeps
#: the high-water mark across exec), so the measured one is forked from this small one.
_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
sys.stderr.write(f"\\npeak_rss_kib={usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass
class Submitted:
    rc: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss: int  # bytes


def submit(
    db: Path, source: Path | None, *args: str, stdin: Path | None = None, env: dict | None = None
) -> Submitted:
    """`genqueue submit` in a child process (no broker: the job is only stored), timed,
    with its own peak RSS from wait4."""
    cmd = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "genqueue.cli", "submit"]
    cmd += [str(source) if source is not None else "-", "--database-url", f"sqlite:///{db}"]
    cmd += list(args)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("GENQUEUE_MAX_")}
    child_env.pop("GENQUEUE_BROKER_URL", None)
    child_env.update(env or {})
    out_path, err_path = db.with_suffix(".out"), db.with_suffix(".err")
    started = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        stdin_f = stdin.open("rb") if stdin is not None else subprocess.DEVNULL
        try:
            rc = subprocess.run(
                cmd, stdin=stdin_f, stdout=out, stderr=err, env=child_env
            ).returncode
        finally:
            if stdin is not None:
                stdin_f.close()  # type: ignore[union-attr]
    wall = time.monotonic() - started
    stderr, _, peak = err_path.read_text().rpartition("\npeak_rss_kib=")
    return Submitted(rc, out_path.read_text(), stderr, wall, int(peak) * 1024)


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> int:
    tmp = tmp_path_factory.mktemp("baseline")
    src = tmp / "one.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    got = submit(tmp / "db.sqlite", src, "--model", str(tiny_gpt2_dir))
    assert got.rc == 0, got.stderr
    return got.peak_rss


@pytest.fixture(scope="module")
def parquet_baseline_rss(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> int:
    """A one-row Parquet submission (pyarrow's own memory comes with it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = tmp_path_factory.mktemp("baseline-parquet")
    src = tmp / "one.parquet"
    pq.write_table(pa.table({"prompt": ["hi"]}), src)
    got = submit(tmp / "db.sqlite", src, "--model", str(tiny_gpt2_dir))
    assert got.rc == 0, got.stderr
    return got.peak_rss


def jobs_stored(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if "jobs" not in tables:
            return 0
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


def check_rejected(got: Submitted, db: Path, baseline: int, *expected: str) -> None:
    """Refused (exit 2), with every expected text in the message, in time and memory,
    and nothing stored."""
    assert got.rc == 2, (got.rc, got.stderr)
    assert "Traceback" not in got.stderr
    for text in expected:
        assert text in got.stderr, got.stderr
    assert got.wall_s <= WALL_LIMIT_S, got.wall_s
    print(f"  wall {got.wall_s:.2f}s, peak RSS {got.peak_rss / corpus.MiB:.0f} MiB")
    assert got.peak_rss <= baseline + 2 * LINE_LIMIT + RSS_CONSTANT, (
        got.peak_rss / corpus.MiB,
        baseline / corpus.MiB,
    )
    assert jobs_stored(db) == 0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "genqueue.db"


@pytest.fixture
def model(tiny_gpt2_dir: Path) -> list[str]:
    return ["--model", str(tiny_gpt2_dir)]


def test_line_of_30_mb(tmp_path: Path, db: Path, model: list[str], baseline_rss: int) -> None:
    got = submit(db, corpus.line_30mb(tmp_path), *model)
    check_rejected(
        got,
        db,
        baseline_rss,
        "1 problem(s)",
        "line 1: line is 30,000,000 bytes; at most 8,388,608 are allowed "
        "(GENQUEUE_MAX_RECORD_BYTES)",
    )


def test_line_of_300_mb_through_stdin(
    tmp_path: Path, db: Path, model: list[str], baseline_rss: int
) -> None:
    source = corpus.line_300mb(tmp_path)
    got = submit(db, None, *model, stdin=source)
    check_rejected(got, db, baseline_rss, "line 1: line is 300,000,000 bytes")


def test_line_limit_is_configurable(tmp_path: Path, db: Path, model: list[str]) -> None:
    source = tmp_path / "two.jsonl"
    source.write_text('{"prompt": "short"}\n{"prompt": "' + "z" * 5000 + '"}\n')
    got = submit(db, source, *model, env={"GENQUEUE_MAX_RECORD_BYTES": "4096"})
    assert got.rc == 2
    assert "line 2: line is 5,014 bytes; at most 4,096 are allowed" in got.stderr


def test_deep_nesting(tmp_path: Path, db: Path, model: list[str], baseline_rss: int) -> None:
    got = submit(db, corpus.deep_nesting(tmp_path), *model)
    check_rejected(
        got,
        db,
        baseline_rss,
        "line 2: invalid JSON: the record nests objects or arrays more than 64 levels deep "
        "(GENQUEUE_MAX_NESTING_DEPTH)",
    )


def test_moderate_nesting(tmp_path: Path, db: Path, model: list[str], baseline_rss: int) -> None:
    got = submit(db, corpus.moderate_nesting(tmp_path), *model)
    check_rejected(got, db, baseline_rss, "line 1: field 'meta': the record nests")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (corpus.wide_json_record, "line 1: the record holds more than 1,000,000 values"),
        (corpus.wide_csv_record, "line 2: the record holds more than 1,000,000 fields"),
    ],
)
def test_wide_records_are_refused_before_parsing(
    tmp_path: Path, db: Path, model: list[str], baseline_rss: int, case: object, expected: str
) -> None:
    got = submit(db, case(tmp_path), *model)  # type: ignore[operator]
    check_rejected(got, db, baseline_rss, expected, "(GENQUEUE_MAX_RECORD_VALUES)")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{review:>100000000}", "asks for a width of 100,000,000; at most 1000"),
        ("{review:.200000000}", "asks for a precision of 200,000,000"),
        ("{review:*^1000000000}", "asks for a width of 1,000,000,000"),
        ("{review!r:>5000}", "asks for a width of 5,000"),
    ],
)
def test_template_cannot_amplify_a_field(
    tmp_path: Path, db: Path, model: list[str], baseline_rss: int, template: str, expected: str
) -> None:
    got = submit(db, corpus.short_reviews(tmp_path), *model, "--template", template)
    check_rejected(got, db, baseline_rss, expected)


def test_rendered_prompt_is_bounded(
    tmp_path: Path, db: Path, model: list[str], baseline_rss: int
) -> None:
    source = corpus.repeated_field_template(tmp_path)
    got = submit(db, source, *model, "--template", "{text} {text} {text}")
    check_rejected(
        got,
        db,
        baseline_rss,
        "line 1: the prompt is at least",
        "at most 4,000,000 are allowed (GENQUEUE_MAX_PROMPT_CHARS)",
    )


def test_csv_field_of_50_mb(tmp_path: Path, db: Path, model: list[str], baseline_rss: int) -> None:
    """Short lines inside one quoted field: the record, not a line, is too long."""
    got = submit(db, corpus.csv_field_50mb(tmp_path), *model)
    check_rejected(
        got,
        db,
        baseline_rss,
        "line 3: the CSV record is more than 8,388,608 bytes; at most 8,388,608 are allowed "
        "(GENQUEUE_MAX_RECORD_BYTES)",
        "reading stopped here",
    )


def test_csv_field_over_the_field_limit(
    tmp_path: Path, db: Path, model: list[str], baseline_rss: int
) -> None:
    got = submit(db, corpus.csv_field_5m_chars(tmp_path), *model)
    check_rejected(
        got,
        db,
        baseline_rss,
        "line 3: field 'prompt' is 5,000,000 characters long; at most 4,000,000 are allowed "
        "(GENQUEUE_MAX_FIELD_CHARS)",
    )


def test_gzip_bomb(tmp_path: Path, db: Path, model: list[str], baseline_rss: int) -> None:
    source = corpus.gzip_bomb(tmp_path)
    assert source.stat().st_size < 8 * corpus.MB  # expands to 2 GiB
    limit = 256 * corpus.MiB
    got = submit(db, source, *model, env={"GENQUEUE_MAX_INPUT_BYTES": str(limit)})
    check_rejected(
        got,
        db,
        baseline_rss,
        "the input is larger than 268,435,456 bytes (after decompression; "
        "GENQUEUE_MAX_INPUT_BYTES)",
    )
    assert "line 257: the input is larger" in got.stderr  # after 256 lines of 1 MiB


def test_too_many_records(tmp_path: Path, db: Path, model: list[str], baseline_rss: int) -> None:
    got = submit(
        db, corpus.many_records(tmp_path, 1001), *model, env={"GENQUEUE_MAX_RECORDS": "1000"}
    )
    check_rejected(got, db, baseline_rss, "line 1001: the input has more than 1,000 records")


def test_parquet_big_row_group(
    tmp_path: Path, db: Path, model: list[str], parquet_baseline_rss: int
) -> None:
    source = corpus.parquet_big_row_group(tmp_path)
    got = submit(db, source, *model, env={"GENQUEUE_MAX_ROW_GROUP_BYTES": str(4 * corpus.MiB)})
    check_rejected(
        got,
        db,
        parquet_baseline_rss,
        "line 1: row group 1 (rows 1-20000) is",
        "at most 4,194,304 are allowed (GENQUEUE_MAX_ROW_GROUP_BYTES)",
    )


def test_parquet_big_cell(
    tmp_path: Path, db: Path, model: list[str], parquet_baseline_rss: int
) -> None:
    """The row's size is measured in Arrow, so the 20 MB cell is never copied into
    Python; pyarrow itself decompresses the page holding it whole (bounded by the row
    group limit), which the bound allows for twice."""
    got = submit(db, corpus.parquet_big_cell(tmp_path), *model)
    check_rejected(
        got,
        db,
        parquet_baseline_rss + 2 * 20 * corpus.MB,
        "line 2: the row is 20,000,003 bytes; at most 8,388,608",
    )


def test_parquet_value_repeated_by_its_dictionary(
    tmp_path: Path, db: Path, model: list[str], parquet_baseline_rss: int
) -> None:
    source = corpus.parquet_repeated_value(tmp_path)
    assert source.stat().st_size < 100_000  # 2 GB once expanded
    got = submit(db, source, *model)
    check_rejected(
        got, db, parquet_baseline_rss, "200 problem(s)", "line 1: the row is 10,000,000 bytes"
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (corpus.nul_heavy, "line 2: field 'prompt' contains a NUL character"),
        (corpus.nul_csv, "line 3: field 'prompt' contains a NUL character"),
        (corpus.lone_surrogate, "line 2: field 'prompt' contains an unpaired UTF-16 surrogate"),
        (corpus.encoded_surrogate, "line 1: not valid UTF-8 (byte 0xed at column 14)"),
    ],
)
def test_text_that_cannot_be_stored(
    tmp_path: Path, db: Path, model: list[str], baseline_rss: int, case: object, expected: str
) -> None:
    got = submit(db, case(tmp_path), *model)  # type: ignore[operator]
    check_rejected(got, db, baseline_rss, expected)


def test_huge_numbers(tmp_path: Path, db: Path, model: list[str], baseline_rss: int) -> None:
    got = submit(db, corpus.huge_numbers(tmp_path), *model)
    check_rejected(
        got,
        db,
        baseline_rss,
        "3 problem(s)",
        "line 1: invalid JSON: the number 1e999999 is too large to represent",
        "line 2: invalid JSON: NaN is not a JSON number",
        "line 3: invalid JSON: an integer has too many digits",
    )


def test_openai_line_nested_too_deep(
    tmp_path: Path, db: Path, model: list[str], baseline_rss: int
) -> None:
    got = submit(db, corpus.openai_deep_body(tmp_path), *model)
    check_rejected(got, db, baseline_rss, "line 2: field 'body': the record nests")


def test_prompt_that_cannot_fit_fails_at_submission(
    tmp_path: Path, db: Path, model: list[str], baseline_rss: int
) -> None:
    """2,000,000 characters against a 512-token context: the item fails at once, with no
    worker and without tokenising it; the short item waits for a worker."""
    got = submit(db, corpus.long_prompt(tmp_path), *model, "--json")
    assert got.rc == 0, got.stderr
    print(f"  wall {got.wall_s:.2f}s, peak RSS {got.peak_rss / corpus.MiB:.0f} MiB")
    assert got.wall_s <= WALL_LIMIT_S
    assert got.peak_rss <= baseline_rss + 2 * LINE_LIMIT + RSS_CONSTANT
    job_id = json.loads(got.stdout)["job_id"]
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT idx, status, error_code, error_message, worker FROM results WHERE job_id = ?",
            (job_id,),
        ).fetchall()
        tasks = conn.execute(
            "SELECT state, n_items, n_failed FROM tasks WHERE job_id = ? ORDER BY id", (job_id,)
        ).fetchall()
    assert len(rows) == 1
    idx, status, code, message, worker = rows[0]
    assert (idx, status, code, worker) == (0, "failed", "prompt_too_long", "scheduler")
    assert "context of 512 tokens" in message and "--truncate" in message
    assert sorted(tasks) == [("done", 1, 1), ("pending", 1, 0)]


def test_many_long_documents_are_stored_window_by_window(
    tmp_path: Path, db: Path, model: list[str], baseline_rss: int
) -> None:
    """120 MB of legal 3 MB documents: stored, with memory bounded by the window's
    character budget rather than by the 8,192 items a window may hold."""
    got = submit(db, corpus.many_long_documents(tmp_path), *model, "--kind", "summarize")
    assert got.rc == 0, got.stderr
    print(f"  wall {got.wall_s:.2f}s, peak RSS {got.peak_rss / corpus.MiB:.0f} MiB")
    assert got.peak_rss <= baseline_rss + 2 * LINE_LIMIT + RSS_CONSTANT
    assert jobs_stored(db) == 1
