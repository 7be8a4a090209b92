"""The command line as a user runs it: real processes, real Redis, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from genqueue.broker import queue_depth, redis_client
from genqueue.protocol import queue_for
from tests.schemas import validate_line

pytestmark = pytest.mark.slow
GQ = [sys.executable, "-m", "genqueue.cli"]


def gq(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    check: bool = True,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*GQ, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin.decode() if stdin else None,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"genqueue {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def damaged_copy(model_dir: Path, tmp_path: Path, weights: bytes) -> Path:
    """`model_dir`'s config and tokenizer with unreadable weights: it passes the checks
    made before any work and fails in the worker that loads it."""
    bad = tmp_path / "damaged"
    bad.mkdir()
    for f in model_dir.glob("*.json"):
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(weights)
    return bad


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_run_embedded_writes_one_result_per_input(tmp_path: Path) -> None:
    """`genqueue run` on a fresh setup: builds the tiny model, starts embedded Redis +
    SQLite + workers, exits 0 and writes one valid line per input, next to the input."""
    src = write_jsonl(
        tmp_path / "reviews.jsonl",
        [{"custom_id": f"r{i}", "review": "good " * (i % 7 + 1)} for i in range(60)],
    )
    env = {"GENQUEUE_HOME": str(tmp_path / "home")}
    proc = gq(
        "run",
        str(src),
        "--model",
        "tiny-gpt2",
        "--template",
        "Review: {review}",
        "--max-new-tokens",
        "4",
        "--workers",
        "2",
        "--json",
        env=env,
        timeout=300,
    )
    summary = json.loads(proc.stdout)
    assert summary["state"] == "completed"
    out = tmp_path / "reviews.results.jsonl"
    assert summary["results"] == str(out) and summary["lines"] == 60
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [ln["custom_id"] for ln in lines] == [f"r{i}" for i in range(60)]
    for ln in lines:
        validate_line(ln)
        assert ln["status"] == "succeeded"
    # The job stays in the run's database: the job commands find it with no URL given.
    st = json.loads(gq("status", summary["job_id"], "--json", env=env).stdout)
    assert st["state"] == "completed" and st["counts"]["succeeded"] == 60
    # `genqueue jobs` shows ids whole (they are what the other commands take), even at 80
    # columns.
    assert summary["job_id"] in gq("jobs", env={**env, "COLUMNS": "80"}).stdout
    gq("results", summary["job_id"], "-o", str(tmp_path / "again.csv"), env=env)
    assert len((tmp_path / "again.csv").read_text().splitlines()) == 61
    # A state dir or SQLite file that holds no database is refused, not created.
    for where in (
        ["--state-dir", str(tmp_path / "nope")],
        ["--database-url", f"sqlite:///{tmp_path}/no/x.db"],
    ):
        proc = gq("status", summary["job_id"], *where, env=env, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "nope").exists() and not (tmp_path / "no").exists()


def test_run_reads_stdin_csv_and_explains_bad_input(tmp_path: Path) -> None:
    env = {"GENQUEUE_HOME": str(tmp_path / "home")}
    bad = b'{"prompt": "ok"}\n{"prompt": \n{"text": "no prompt"}\n'
    proc = gq(
        "run",
        "-",
        "--model",
        "tiny-gpt2",
        "-o",
        str(tmp_path / "o.jsonl"),
        env=env,
        check=False,
        stdin=bad,
    )
    assert proc.returncode == 2
    assert "line 2" in proc.stderr and "line 3" in proc.stderr and "prompt" in proc.stderr
    assert "nothing was submitted" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_run_with_a_model_that_cannot_load_says_why_at_once(
    tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    """Weights that pass the up-front checks but cannot be read: the worker exits with
    its reason, and the run stops with it instead of restarting the worker forever."""
    bad = damaged_copy(tiny_gpt2_dir, tmp_path, b"not a safetensors file")
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hello"}, {"prompt": "world"}])
    t0 = time.monotonic()
    proc = gq(
        "run", str(src), "--model", str(bad), "--workers", "1", "--max-new-tokens", "4",
        "--state-dir", str(tmp_path / "state"), "-o", str(tmp_path / "o.jsonl"),
        check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"cannot load model {bad}" in proc.stderr and "damaged" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 60


def test_run_restarts_a_worker_process_that_dies(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    """A local worker killed mid-run is started again; its task is leased again and the
    job ends with every item done once."""
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"custom_id": f"k{i}", "prompt": f"item {i}"} for i in range(240)]
    )
    args = [*GQ, "run", str(src), "--model", str(tiny_gpt2_dir), "--workers", "1"]
    args += ["--max-new-tokens", "24", "--chunk-size", "20", "--json"]
    args += ["--state-dir", str(tmp_path / "state"), "-o", str(tmp_path / "o.jsonl")]
    env = {**os.environ, "GENQUEUE_LEASE_SECONDS": "6"}
    run = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        db = tmp_path / "state" / "genqueue.db"
        deadline = time.monotonic() + 120
        killed = None
        while killed is None:
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.3)
            workers = [
                p
                for p in psutil.Process(run.pid).children(recursive=True)
                if "genqueue.worker.forkserver" in " ".join(p.cmdline())
                and p.parent().pid != run.pid  # a forked worker, not the server itself
            ]
            if workers and db.exists() and _results(db) > 0:
                workers[0].kill()
                killed = workers[0].pid
        out, err = run.communicate(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err.decode()[-3000:]
    assert json.loads(out)["counts"]["succeeded"] == 240
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert sorted(ln["custom_id"] for ln in lines) == sorted(f"k{i}" for i in range(240))
    assert f"worker process {killed} exited" in err.decode()


def test_an_interrupted_run_writes_what_the_database_holds(
    tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    """Ctrl-C: the job is cancelled, the running micro-batches finish, and the results
    file agrees with the database: every line succeeded or cancelled, none pending."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"item {i}"} for i in range(200)])
    state = tmp_path / "state"
    args = [*GQ, "run", str(src), "--model", str(tiny_gpt2_dir), "--workers", "1"]
    args += ["--max-new-tokens", "24", "--chunk-size", "20", "--state-dir", str(state)]
    args += ["-o", str(tmp_path / "o.jsonl")]
    run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ((state / "genqueue.db").exists() and _results(state / "genqueue.db") > 0):
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, err.decode()[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(lines) == 200
    statuses = [ln["status"] for ln in lines]
    assert set(statuses) <= {"succeeded", "cancelled"}, set(statuses)
    assert 0 < statuses.count("succeeded") < 200
    job_id = err.decode().split(":", 1)[0].strip().splitlines()[-1]
    st = json.loads(gq("status", job_id, "--json", "--state-dir", str(state)).stdout)
    assert st["state"] == "cancelled"
    assert st["counts"]["succeeded"] == statuses.count("succeeded")
    assert st["counts"]["cancelled"] == statuses.count("cancelled")
    kept = {ln["index"]: ln["output"] for ln in lines if ln["status"] == "succeeded"}

    # The cancelled items run again here, and the file then holds every line.
    retry = ["retry", job_id, "--state-dir", str(state), "-o", str(tmp_path / "o.jsonl")]
    stray = gq(*retry, check=False)
    assert stray.returncode == 2 and "-o go(es) with --local" in stray.stderr
    again = gq(*retry, "--local", "--workers", "1")
    assert "200 succeeded, 0 failed of 200" in again.stderr, again.stderr
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [ln["status"] for ln in lines] == ["succeeded"] * 200
    assert all(lines[i]["output"] == text for i, text in kept.items())
    st = json.loads(gq("status", job_id, "--json", "--state-dir", str(state)).stdout)
    assert st["state"] == "completed" and st["counts"]["succeeded"] == 200
    nothing = gq(*retry, "--local")
    assert "no failed or cancelled or expired items to run again" in nothing.stderr


def _results(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as con:
        try:
            return int(con.execute("select count(*) from results").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


@pytest.fixture
def services(pg_url: str, redis_url: str, tiny_gpt2_dir: Path) -> dict[str, str]:
    return {
        "GENQUEUE_DATABASE_URL": pg_url,
        "GENQUEUE_BROKER_URL": redis_url,
        "GENQUEUE_LEASE_SECONDS": "5",
        "GENQUEUE_RECONCILE_INTERVAL": "0.5",
        "GENQUEUE_HOME": os.environ["GENQUEUE_HOME"],
    }


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*GQ, *args], env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def stop(proc: subprocess.Popen[bytes], bound: float = 30) -> float:
    """SIGTERM, and how long it took to exit (the graceful-stop bound)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("process did not stop within the bound") from None
    return time.monotonic() - t0


def test_submit_to_postgres_with_two_worker_processes(
    services: dict[str, str], tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"prompt": f"item {i} " + "word " * (i % 30)} for i in range(300)]
    )
    # As the README deploys it: the schema first (workers never create or change it).
    gq("db", "upgrade", env=services)
    worker = start(
        ["worker", "--model", str(tiny_gpt2_dir), "--processes", "2", "--device", "cpu"], services
    )
    sched = start(["scheduler"], services)
    try:
        # `--wait` follows the job to its end, and prints its final status.
        st = json.loads(
            gq(
                "submit",
                str(src),
                "--model",
                str(tiny_gpt2_dir),
                "--max-new-tokens",
                "4",
                "--chunk-size",
                "16",
                "--wait",
                "--json",
                env=services,
                timeout=240,
            ).stdout
        )
        job_id = st["job_id"]
        assert st["state"] == "completed", st
        assert st["counts"]["succeeded"] == 300
        # On CPU both processes were forked from one fork server under `genqueue worker`.
        [server] = psutil.Process(worker.pid).children()
        assert "genqueue.worker.forkserver" in server.cmdline()
        assert len(server.children()) == 2
        listed = json.loads(gq("jobs", "--json", env=services).stdout)
        assert [j["job_id"] for j in listed] == [job_id]
        gq("results", job_id, "-o", str(tmp_path / "out.csv"), env=services)
        assert len((tmp_path / "out.csv").read_text().splitlines()) == 301
        lines = [json.loads(x) for x in gq("results", job_id, env=services).stdout.splitlines()]
        assert len(lines) == 300
        for ln in lines:
            validate_line(ln)
        with_attempts = gq("status", job_id, env=services).stdout
        assert "completed" in with_attempts
    finally:
        assert stop(worker) < 30
        stop(sched)


def test_a_worker_whose_model_cannot_load_stops_with_the_reason(
    services: dict[str, str], tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    bad = damaged_copy(tiny_gpt2_dir, tmp_path, b"\x00" * 64)
    gq("db", "upgrade", env=services)
    t0 = time.monotonic()
    proc = gq(
        "worker", "--model", str(bad), "--processes", "2", "--device", "cpu",
        env=services, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no process could load model" in proc.stderr and "damaged" in proc.stderr
    assert "worker-0.log" not in proc.stderr  # no log file is written here
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert time.monotonic() - t0 < 90


def test_invalid_submission_leaves_nothing_behind(
    services: dict[str, str], tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [{"prompt": "a", "custom_id": "x"}, {"prompt": "b", "custom_id": "x"}],
    )
    proc = gq("submit", str(src), "--model", str(tiny_gpt2_dir), env=services, check=False)
    assert proc.returncode == 2
    assert "custom_id 'x' is used more than once (lines 1, 2)" in proc.stderr
    proc = gq(
        "submit",
        str(src),
        "--model",
        str(tiny_gpt2_dir),
        "--temperature",
        "-1",
        env=services,
        check=False,
    )
    assert proc.returncode == 2 and "temperature" in proc.stderr and "0 <" in proc.stderr
    proc = gq("submit", str(src), "--model", str(tmp_path / "nope"), env=services, check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert json.loads(gq("jobs", "--json", env=services).stdout) == []
    client = redis_client(services["GENQUEUE_BROKER_URL"])
    assert queue_depth(client, queue_for(str(tiny_gpt2_dir))) == 0


def test_cancel_keeps_results_and_marks_the_rest(
    services: dict[str, str], tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"p{i}"} for i in range(40)])
    job_id = gq("submit", str(src), "--model", str(tiny_gpt2_dir), env=services).stdout.strip()
    assert "cancel requested" in gq("cancel", job_id, env=services).stderr
    st = json.loads(gq("status", job_id, "--json", env=services).stdout)
    assert st["state"] == "cancelled" and st["counts"]["cancelled"] == 40
    lines = [json.loads(x) for x in gq("results", job_id, env=services).stdout.splitlines()]
    assert {ln["status"] for ln in lines} == {"cancelled"}
    assert lines[0]["error"]["code"] == "job_cancelled"
    for ln in lines:
        validate_line(ln)


def test_run_an_openai_file_naming_two_models(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    """`genqueue run` on OpenAI batch lines for two models starts workers for both and
    writes OpenAI output lines, failures to the error file; a bad -o fails at once."""
    other = tmp_path / "second-model"
    other.symlink_to(tiny_gpt2_dir, target_is_directory=True)
    records = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": str(tiny_gpt2_dir if i % 2 else other),
                "messages": [{"role": "user", "content": f"hello {i}"}],
                "max_tokens": 3,
            },
        }
        for i in range(8)
    ]
    src = write_jsonl(tmp_path / "requests.jsonl", records)
    bad = gq("run", str(src), "-o", str(tmp_path / "x.out"), check=False)
    assert bad.returncode == 2 and "cannot tell the format of" in bad.stderr
    assert "job" not in bad.stderr.split("error:")[0]  # refused before any job started
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    proc = gq(
        "run",
        str(src),
        "-o",
        str(out),
        "--results-format",
        "openai",
        "--errors",
        str(errors),
        "--workers",
        "2",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert "batch_" in proc.stderr and "8 succeeded" in proc.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [ln["custom_id"] for ln in lines] == [f"q{i}" for i in range(8)]
    assert {ln["response"]["body"]["model"] for ln in lines} == {str(tiny_gpt2_dir), str(other)}
    assert errors.read_text() == ""
