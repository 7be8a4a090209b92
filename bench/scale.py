"""Scale: one 1,000,000-item JSONL job: submit and export time and peak memory.

The input is generated (streamed) in a temp dir. `genqueue submit` runs in a child
process against SQLite (or PostgreSQL) + Redis db 11, with no workers; its peak RSS comes
from wait4() on that child. Items are then completed either with one SQL statement
(`--fill sql`, default: results = the prompt, as the dry-run engine would write) or by
dry-run workers (`--fill dry-run`), and `genqueue results JOB -o out.jsonl` is timed
and measured the same way.

    python bench/scale.py --items 1000000            # full size
    python bench/scale.py --items 100000 --fill dry-run --db postgres
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import deploy
import procs
from common import figure

TIMEOUT = 1800.0


def fill_with_sql(db_url: str, job_id: str, max_new: int) -> None:
    """Give every item a succeeded result (output = its prompt) and close the job, as if
    dry-run workers had run it, in three statements."""
    from sqlalchemy import Boolean, DateTime, Integer, String, literal, select, update

    from genqueue.storage.db import open_store, utcnow
    from genqueue.storage.models import Item, Job, Result, Task

    store = open_store(db_url)
    now = literal(utcnow(), DateTime(timezone=True))
    n = literal(max_new, Integer)
    cols = ["job_id", "idx", "status", "output", "finish_reason", "prompt_tokens"]
    cols += ["completion_tokens", "truncated", "task_id", "attempt", "worker", "created_at"]
    rows = select(
        Item.job_id,
        Item.idx,
        literal("succeeded", String),
        Item.prompt,
        literal("length", String),
        n,
        n,
        literal(False, Boolean),
        Item.task_id,
        literal(1, Integer),
        literal("bench-sql-fill", String),
        now,
    ).where(Item.job_id == job_id)
    try:
        with store.session() as s:
            s.execute(Result.__table__.insert().from_select(cols, rows))
            s.execute(
                update(Task)
                .where(Task.job_id == job_id)
                .values(state="done", n_succeeded=Task.n_items, finished_at=now)
            )
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(state="completed", started_at=now, finished_at=now)
            )
    finally:
        store.dispose()


def fill_with_workers(db_url: str, job_id: str, workers: int) -> None:
    """Run dry-run workers on the job's queued messages until it is final."""
    with deploy.deployment("services", database_url=db_url, flush=False) as dep:
        dep.start_workers(common.DRY_RUN_MODEL, workers, engine="dry-run")
        st = deploy.wait_final(dep.client, job_id, timeout=TIMEOUT, poll=1.0)
        if st["state"] != "completed":
            raise RuntimeError(f"job {job_id} ended {st['state']}")


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def measure(items: int, db: str, fill: str, workers: int) -> dict[str, Any]:
    """Generate, submit, fill, export; returns seconds and peak RSS (MB) per step."""
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        d = stack.enter_context(common.scratch_dir("scale-"))
        if db == "postgres":
            db_url = stack.enter_context(common.pg_database())
        else:
            db_url = f"sqlite:///{d / 'genqueue.db'}"
        stack.callback(common.flush_redis)
        print(f"[scale] writing {items:,} records", flush=True)
        t0 = time.perf_counter()
        src = common.write_records(d / "big.jsonl", items)
        out["generate_s"] = time.perf_counter() - t0
        out["input_mb"] = src.stat().st_size / 2**20
        common.flush_redis()
        # Migrate first, so schema creation is not counted in the submit.
        from genqueue.storage.db import open_store

        open_store(db_url).dispose()
        print("[scale] genqueue submit", flush=True)
        cmd = ["genqueue", "submit", str(src), "--model", common.DRY_RUN_MODEL, "--json"]
        cmd += ["--max-new-tokens", "16", "--database-url", db_url]
        sub = procs.run_measured([*cmd, "--broker-url", common.REDIS_URL], timeout=TIMEOUT)
        if sub.rc != 0:
            raise RuntimeError(f"genqueue submit failed ({sub.rc}): {sub.stderr[-3000:]}")
        job_id = json.loads(sub.stdout)["job_id"]
        out.update(submit_s=sub.seconds, submit_rss_mb=sub.peak_rss_mb)
        print(f"[scale] completing the job ({fill})", flush=True)
        t0 = time.perf_counter()
        if fill == "sql":
            fill_with_sql(db_url, job_id, 16)
        else:
            fill_with_workers(db_url, job_id, workers)
        out["fill_s"] = time.perf_counter() - t0
        print("[scale] genqueue results", flush=True)
        target = d / "out.jsonl"
        cmd = ["genqueue", "results", job_id, "-o", str(target), "--database-url", db_url]
        exp = procs.run_measured(cmd, timeout=TIMEOUT)
        if exp.rc != 0:
            raise RuntimeError(f"genqueue results failed ({exp.rc}): {exp.stderr[-3000:]}")
        lines = count_lines(target)
        if lines != items:
            raise RuntimeError(f"export wrote {lines} lines, expected {items}")
        out.update(export_s=exp.seconds, export_rss_mb=exp.peak_rss_mb)
        out["output_mb"] = target.stat().st_size / 2**20
        if db == "sqlite":
            out["db_mb"] = (d / "genqueue.db").stat().st_size / 2**20
    return out


def run(
    items: int = 1_000_000, db: str = "sqlite", fill: str = "sql", workers: int = 2
) -> common.Report:
    r = measure(items, db, fill, workers)
    where = "SQLite" if db == "sqlite" else "PostgreSQL"
    figs = [
        figure(f"submit {items:,} items ({where})", r["submit_s"], "s", target="<= 60"),
        figure("... submit rate", items / r["submit_s"], "items/s"),
        figure("... submit peak RSS", r["submit_rss_mb"], "MB", target="<= 300"),
        figure(f"complete all items ({fill})", r["fill_s"], "s"),
        figure(f"export {items:,} lines to JSONL", r["export_s"], "s", target="<= 30"),
        figure("... export rate", items / r["export_s"], "lines/s"),
        figure("... export peak RSS", r["export_rss_mb"], "MB", target="<= 300"),
        figure("input file", r["input_mb"], "MB"),
        figure("output file", r["output_mb"], "MB"),
    ]
    if "db_mb" in r:
        figs.append(figure("SQLite database after the job", r["db_mb"], "MB"))
    how = (
        "one INSERT ... SELECT (results = prompts) + task/job updates, not the workers"
        if fill == "sql"
        else f"{workers} dry-run worker processes"
    )
    notes = [
        f"Submit = `genqueue submit` child process (Python start-up, validation, storing, "
        f"dispatching {-(-items // 64):,} task ids to Redis), wall time and exact peak RSS "
        f"(wait4). Items completed by {how}. Export = `genqueue results -o` child process."
    ]
    return {"title": f"Scale: a {items:,}-item job", "figures": figs, "notes": notes}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--fill", choices=["sql", "dry-run"], default="sql")
    p.add_argument("--workers", type=int, default=2, help="dry-run workers for --fill dry-run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> common.Report:
    a = parse(argv)
    report = run(a.items, a.db, a.fill, a.workers)
    common.print_report(report)
    return report


if __name__ == "__main__":
    main()
