"""A trivial Celery app for overhead.py's raw-Celery baseline: one task that counts.

It uses genqueue's own Celery configuration (late acks, prefetch 1, JSON), so the
baseline is the broker round trip genqueue pays per task, with no SQL and no model.
Workers run it as `celery -A celery_noop worker --pool=solo` from this folder.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

from genqueue.broker import celery_config

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/11")
QUEUE = "bench.noop"
COUNTER = "bench:noop:count"

app = Celery("bench-noop")
app.conf.update(celery_config(BROKER_URL))
if os.environ.get("BENCH_TASK_EVENTS") == "0":  # task_events.py: the same without events
    app.conf.update(worker_send_task_events=False, task_send_sent_event=False)
_redis: Any = None


@app.task(name="bench.noop")
def noop(i: int) -> None:
    """Count one consumed message."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER_URL)
    _redis.incr(COUNTER)
