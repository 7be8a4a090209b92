"""The Celery configuration both sides share: at-least-once delivery, JSON only, ids only.

Messages carry a task id and nothing else (text lives in SQL). The SQL lease is the real
clock for redelivery (docs/architecture.md, "Delivery semantics"); Redis' visibility
timeout is a far backstop.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import unquote, urlparse

from celery import Celery

#: Redis list priorities: kombu pops list 0 first. Users say 0..9 with 9 the most urgent.
PRIORITY_STEPS = list(range(10))
PRIORITY_SEP = ":"

#: TCP keepalive for broker connections: probe after 5 s idle, every 2 s, 3 times.
KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}

#: How long a consumer's BRPOP waits for a message before it asks again (kombu's
#: `polling_interval`, 1 s by default). A worker told to stop first reads the answer of
#: the BRPOP in flight (a message popped meanwhile would otherwise be lost), so this
#: bounds how long stopping takes: a `genqueue run` waits for it at the end of every job.
#: Five reads a second from an idle worker cost Redis nothing measurable.
BRPOP_SECONDS = 0.2


def celery_config(broker_url: str, *, task_events: bool = True) -> dict[str, Any]:
    """The configuration of every Celery app genqueue makes; `task_events` (the
    `task_events` setting) turns the workers' task events on."""
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # ride out broker outages
        "broker_transport_options": {
            "priority_steps": PRIORITY_STEPS,
            "sep": PRIORITY_SEP,
            "queue_order_strategy": "priority",
            "visibility_timeout": 12 * 3600,
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
            "retry_on_timeout": True,
            "health_check_interval": 10,
            "polling_interval": BRPOP_SECONDS,
            # A connection whose network went away (a pulled cable answers nothing) is
            # found dead within about 11 s instead of the kernel's two hours, so the
            # consumer reconnects (with backoff) as soon as the network is back.
            "socket_keepalive": True,
            "socket_keepalive_options": KEEPALIVE,
        },
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_ignore_result": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
        "task_create_missing_queues": True,
        "worker_enable_remote_control": False,
        # Task events (sent, received, started, succeeded, ...) for monitors such as
        # Flower (`celery --broker URL flower`). They are fire-and-forget broadcasts
        # (nobody listening costs one publish each) and are buffered while the broker
        # is away.
        "worker_send_task_events": task_events,
        "task_send_sent_event": True,
    }


def make_celery(broker_url: str, name: str = "genqueue", *, task_events: bool = True) -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(broker_url, task_events=task_events))
    return app


def broker_priority(user_priority: int) -> int:
    """Map the user's 0..9 (9 most urgent) to kombu's Redis list order (0 popped first)."""
    return 9 - max(0, min(9, user_priority))


def redis_client(broker_url: str) -> Any:
    """A plain redis-py client for the broker (queue depth, the epoch sentinel)."""
    import redis

    parsed = urlparse(broker_url)
    if parsed.scheme in ("redis+socket", "unix"):
        db = 0
        for part in (parsed.query or "").split("&"):
            if part.startswith("virtual_host=") or part.startswith("db="):
                db = int(part.split("=", 1)[1] or 0)
        return redis.Redis(
            unix_socket_path=unquote(parsed.path),
            db=db,
            socket_timeout=10,
            socket_connect_timeout=5,
        )
    return redis.Redis.from_url(
        broker_url.replace("rediss+", "").replace("redis+", ""),
        socket_timeout=10,
        socket_connect_timeout=5,
        socket_keepalive=True,
        socket_keepalive_options=KEEPALIVE,
    )


def queue_depth(client: Any, queue: str) -> int:
    """Messages waiting in a queue, over all priority lists (unacked ones excluded)."""
    pipe = client.pipeline()
    for pri in PRIORITY_STEPS:
        pipe.llen(queue if pri == 0 else f"{queue}{PRIORITY_SEP}{pri}")
    return int(sum(pipe.execute()))
