"""What Celery task events (for Flower) cost: raw Celery tasks/s with genqueue's config,
events on (the default) and off, side by side in one run (alternating, twice each).

Each task is a trivial one that INCRs a Redis counter, consumed by one solo worker
(started with worker heartbeats, as genqueue's workers are). genqueue's own tasks are
chunks of many items, so what events cost per task is spread over those items; this is
the worst case, one item per task.

    python bench/task_events.py [--messages 3000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from typing import Any

import common
import procs
from common import figure


def consume_rate(messages: int, events: bool) -> float:
    """tasks/s from the first send to the last task consumed."""
    os.environ.setdefault("BENCH_BROKER_URL", common.REDIS_URL)  # the sender's broker too
    import celery_noop
    import redis

    common.flush_redis()
    r = redis.Redis.from_url(common.REDIS_URL)
    flag = "1" if events else "0"
    env = {
        "BENCH_BROKER_URL": common.REDIS_URL,
        "PYTHONPATH": str(common.BENCH_DIR),
        "BENCH_TASK_EVENTS": flag,
    }
    app = celery_noop.app
    app.conf.task_send_sent_event = events
    cmd = [sys.executable, "-m", "celery", "-A", "celery_noop", "worker", "--pool=solo"]
    cmd += ["-Q", celery_noop.QUEUE, "-n", "noop@%h", "--loglevel=WARNING"]
    cmd += ["--without-gossip", "--without-mingle"]
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            procs.background(cmd, env=env, cwd=common.BENCH_DIR, stdout=subprocess.DEVNULL)
        )

        def send(k: int) -> None:
            with app.producer_or_acquire() as producer:
                for i in range(k):
                    app.send_task(
                        "bench.noop", args=[i], queue=celery_noop.QUEUE, producer=producer
                    )

        def count() -> int:
            return int(r.get(celery_noop.COUNTER) or 0)

        send(8)  # warm-up: the worker is connected and consuming
        procs.wait_until(lambda: count() >= 8, timeout=120, what="the celery worker")
        r.set(celery_noop.COUNTER, 0)
        t0 = time.perf_counter()
        send(messages)
        procs.wait_until(lambda: count() >= messages, timeout=300, what="celery tasks")
        total = time.perf_counter() - t0
    common.flush_redis()
    return messages / total


def run(messages: int, rounds: int) -> common.Report:
    rates: dict[bool, list[float]] = {True: [], False: []}
    for i in range(rounds):
        for events in (False, True):
            print(f"[task_events] round {i + 1}, events {'on' if events else 'off'}", flush=True)
            rates[events].append(consume_rate(messages, events))
    off, on = max(rates[False]), max(rates[True])
    figs: list[dict[str, Any]] = [
        figure("raw Celery, 1 solo worker, task events off: send + consume", off, "tasks/s"),
        figure("raw Celery, 1 solo worker, task events on: send + consume", on, "tasks/s"),
        figure("events on / off", on / off, "x"),
    ]
    notes = [
        f"{messages:,} trivial tasks per run, {rounds} runs each, alternating; best run "
        f"shown (all: off {', '.join(f'{r:.0f}' for r in rates[False])}, on "
        f"{', '.join(f'{r:.0f}' for r in rates[True])} tasks/s).",
    ]
    return {"title": "Celery task events (Flower)", "figures": figs, "notes": notes}


def main(argv: list[str] | None = None) -> common.Report:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    report = run(a.messages, a.rounds)
    common.print_report(report)
    return report


if __name__ == "__main__":
    main()
