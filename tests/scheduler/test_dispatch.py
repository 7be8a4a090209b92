"""The Dispatcher on a real Redis: task ids (and nothing else) on the model's queue at
the right priority, recorded as sent in SQL, and a lost broker noticed once."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from genqueue.broker import PRIORITY_SEP, redis_client
from genqueue.protocol import TASK_NAME, queue_for
from genqueue.scheduler.dispatch import EPOCH_KEY, Dispatcher
from genqueue.storage.db import Store
from genqueue.storage.models import Task, TaskState
from tests.storage.factories import make_job, task_ids

QUEUE = queue_for("dispatch-test-model")


@pytest.fixture
def dispatcher(redis_url: str) -> Iterator[Dispatcher]:
    d = Dispatcher(redis_url)
    yield d
    d.close()


def messages(redis_url: str, priority_list: int) -> list[dict[str, object]]:
    """The decoded Celery messages waiting on one priority list of QUEUE."""
    client = redis_client(redis_url)
    name = QUEUE if priority_list == 0 else f"{QUEUE}{PRIORITY_SEP}{priority_list}"
    try:
        raw = client.lrange(name, 0, -1)
    finally:
        client.close()
    return [json.loads(m) for m in raw]


def test_send_puts_only_task_ids_on_the_queue_and_records_them(
    store: Store, dispatcher: Dispatcher, redis_url: str
) -> None:
    job = make_job(store, n=6, chunk=2, queue=QUEUE)
    t1, t2, t3 = task_ids(store, job.id)
    assert dispatcher.send(store, [(t1, QUEUE, 9), (t2, QUEUE, 5), (t3, QUEUE, 0)]) == 3
    assert dispatcher.depth(QUEUE) == 3
    urgent, middle, last = messages(redis_url, 0), messages(redis_url, 4), messages(redis_url, 9)
    assert len(urgent) == len(middle) == len(last) == 1  # 9 is popped first, 0 last
    for msg, tid in ((urgent[0], t1), (middle[0], t2), (last[0], t3)):
        assert msg["headers"]["task"] == TASK_NAME  # type: ignore[index]
        args, kwargs, _ = json.loads(base64.b64decode(str(msg["body"])))
        assert args == [tid] and kwargs == {}  # ids only: text lives in SQL
    with store.read() as s:
        rows = s.query(Task).filter(Task.job_id == job.id).all()
    assert {t.state for t in rows} == {TaskState.QUEUED.value}
    assert all(t.enqueued_at is not None for t in rows)


def test_send_ids_uses_each_tasks_queue_and_priority(
    store: Store, dispatcher: Dispatcher, redis_url: str
) -> None:
    job = make_job(store, n=4, chunk=2, queue=QUEUE, priority=9)
    tids = task_ids(store, job.id)
    assert dispatcher.send_ids(store, tids) == 2
    sent = sorted(int(m["headers"]["id"].split("-")[0]) for m in messages(redis_url, 0))  # type: ignore[index]
    assert sent == tids  # both at priority 9, the top list


def test_a_broker_that_lost_its_data_is_noticed_once(
    dispatcher: Dispatcher, redis_url: str
) -> None:
    assert not dispatcher.broker_lost_data()  # first look: the epoch key is set
    assert not dispatcher.broker_lost_data()
    client = redis_client(redis_url)
    try:
        client.delete(EPOCH_KEY)  # what a restart without persistence looks like
    finally:
        client.close()
    assert dispatcher.broker_lost_data()
    assert not dispatcher.broker_lost_data()
