"""Sending task ids to the broker, by task name, one queue per model.

The one implementation of sending: submissions, the reconciler, `retry` and workers
(for tasks they split or release) all send through a `Dispatcher`. It never imports
worker code: it sends `genqueue.run_task` by name with the task id as the only
argument. SQL records what was sent (storage/dispatch.py); the broker is disposable.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from genqueue.broker import broker_priority, make_celery, queue_depth, redis_client
from genqueue.protocol import TASK_NAME
from genqueue.storage import dispatch
from genqueue.storage.db import Store

log = logging.getLogger(__name__)

#: A key the dispatcher keeps in Redis; when it is gone, Redis lost its data (restart
#: without persistence, failover, FLUSHALL) and every queued task must be sent again.
EPOCH_KEY = "genqueue:epoch"


class Dispatcher:
    """Sends tasks and watches the broker for lost messages."""

    def __init__(self, broker_url: str, *, name: str = "genqueue-scheduler") -> None:
        self.broker_url = broker_url
        self.app = make_celery(broker_url, name=name)
        self._redis: Any = None
        self._epoch: str | None = None

    @property
    def redis(self) -> Any:
        if self._redis is None:
            self._redis = redis_client(self.broker_url)
        return self._redis

    def send(self, store: Store, tasks: Iterable[tuple[int, str, int]]) -> int:
        """Send (task id, queue, priority) triples, then record them as sent."""
        sent: list[int] = []
        try:
            # A connection of our own (not kombu's process-wide producer pool), closed
            # after the batch, so closing one dispatcher never breaks another.
            with self.app.connection_for_write() as conn, conn.Producer() as producer:
                for task_id, queue, priority in tasks:
                    self.app.send_task(
                        TASK_NAME,
                        args=[task_id],
                        queue=queue,
                        routing_key=queue,
                        priority=broker_priority(priority),
                        producer=producer,
                        task_id=f"{task_id}-{uuid.uuid4().hex[:8]}",
                    )
                    sent.append(task_id)
                    if len(sent) % 1000 == 0:
                        dispatch.mark_sent(store, sent[-1000:])
        finally:
            dispatch.mark_sent(store, sent[len(sent) - len(sent) % 1000 :])
        return len(sent)

    def send_ids(self, store: Store, task_ids: list[int]) -> int:
        """Send these tasks, each on its job's queue at its own priority."""
        return self.send(store, dispatch.send_targets(store, task_ids))

    def broker_lost_data(self) -> bool:
        """True once after Redis came back empty (its epoch key vanished)."""
        current = self.redis.get(EPOCH_KEY)
        if current is None:
            new = uuid.uuid4().hex
            self.redis.set(EPOCH_KEY, new)
            lost = self._epoch is not None
            self._epoch = new
            return lost
        current = current.decode() if isinstance(current, bytes) else str(current)
        lost = self._epoch is not None and current != self._epoch
        self._epoch = current
        return lost

    def depth(self, queue: str) -> int:
        return queue_depth(self.redis, queue)

    def close(self) -> None:
        """Release every broker connection (an embedded Redis stops with its last client)."""
        if self._redis is not None:
            self._redis.close()
            self._redis.connection_pool.disconnect()
            self._redis = None
        # Sends use their own connections (see send), so no process-wide kombu pool
        # is touched here: other dispatchers on the same URL keep working.
        self.app.close()
