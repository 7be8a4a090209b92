"""What a /metrics scrape costs the database: `storage.metrics.snapshot` (every figure
/metrics reports, read from SQL) timed on PostgreSQL with 100k and 1M stored results
(micro-batches of 32 items, 2,000 jobs, 20 workers).

    python bench/metrics.py [--sizes 100000 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from bench.common import pg_database
from genqueue.storage.db import Store
from genqueue.storage.metrics import FinishedJobs, snapshot

FILL = """
INSERT INTO jobs (id, state, kind, model, queue, params, chunk_size, priority, metadata,
                  options, total_items, duplicate_executions, cancel_requested, created_at,
                  tenant)
SELECT 'job' || j, CASE WHEN j % 10 = 0 THEN 'running' ELSE 'completed' END, 'generate',
       'model-' || (j % 3), 'q' || (j % 3), '{}', 256, 5, '{}', '{}', :per_job, 0, false,
       now(), 'default'
FROM generate_series(1, :jobs) AS j;
INSERT INTO results (job_id, idx, status, output, prompt_tokens, completion_tokens,
                     task_id, attempt, worker, latency_ms, created_at, truncated)
SELECT 'job' || (1 + i / :per_job), i % :per_job,
       CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END, 'x', 12, 8,
       i / 256, 1, 'w', 3.0 + (i / 32) % 97, now(), false
FROM generate_series(0, :n - 1) AS i;
INSERT INTO workers (name, queue, model, started_at, seen_at)
SELECT 'w' || w, 'q' || (w % 3), 'model-' || (w % 3), now(), now()
FROM generate_series(1, 20) AS w;
ANALYZE;
"""


def _time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"scrape time, median of {args.repeat} (10% of the jobs running)")
    print("| results | jobs | first scrape of a process | later scrapes |")
    print("|---:|---:|---:|---:|")
    for n in args.sizes:
        jobs = 2000
        with pg_database("gq_bench_metrics") as url:
            store = Store(url)
            store.migrate()
            with store.engine.begin() as conn:
                for stmt in FILL.split(";"):
                    if stmt.strip():
                        conn.execute(text(stmt), {"n": n, "jobs": jobs, "per_job": n // jobs})
            snap = snapshot(store, live_within=30)  # warm PostgreSQL's cache
            assert sum(h.count for h in snap.batch_latency.values()) > 0
            cold = _time(partial(snapshot, store, live_within=30), args.repeat)
            finished = FinishedJobs()
            warm_snap = snapshot(store, live_within=30, finished=finished)
            assert warm_snap.items == snap.items and warm_snap.tokens == snap.tokens
            for model, h in snap.batch_latency.items():
                got = warm_snap.batch_latency[model]
                assert (got.buckets, got.count) == (h.buckets, h.count)
                assert abs(got.sum_seconds - h.sum_seconds) < 1e-6 * max(1.0, h.sum_seconds)
            warm = _time(partial(snapshot, store, live_within=30, finished=finished), args.repeat)
            store.dispose()
        print(f"| {n:,} | {jobs:,} | {cold:.0f} ms | {warm:.0f} ms |")


if __name__ == "__main__":
    main()
