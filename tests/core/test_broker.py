"""The Celery configuration as kombu applies it on a real Redis."""

from __future__ import annotations

from genqueue.broker import BRPOP_SECONDS, make_celery


def test_a_consumer_waits_at_most_brpop_seconds_per_read(redis_url: str) -> None:
    """A worker told to stop first reads the answer to its BRPOP in flight, so the
    BRPOP timeout bounds how long stopping takes (kombu's own is 1 s, which every
    `genqueue run` waited for at the end of its job)."""
    app = make_celery(redis_url)
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        assert channel.brpop_timeout == BRPOP_SECONDS <= 0.25
        assert conn.transport.polling_interval == BRPOP_SECONDS
