"""Fixtures for the reliability suite: `make_cluster` builds deployments to break (the
harness itself is cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genqueue.client import Client
from genqueue.settings import Settings
from tests.reliability.cluster import Cluster, ClusterFactory, RedisServer


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Build a `Cluster` on a database URL (and a broker URL, else a Redis server of its
    own), with settings overrides; it is torn down (workers, reconciler, helper
    processes, its Redis) after the test."""
    made: list[Cluster] = []
    servers: list[RedisServer] = []

    def make(
        database_url: str,
        broker_url: str | None = None,
        *,
        reconciler: bool = True,
        persistent_broker: bool = False,
        fault_env: dict[str, str] | None = None,
        **overrides: Any,
    ) -> Cluster:
        values: dict[str, Any] = {
            "lease_seconds": 2.0,
            "reconcile_interval": 0.5,
            "dispatch_grace_seconds": 1.0,
            "max_attempts": 3,
            "chunk_size": 16,
            "max_batch_size": 8,
        }
        values.update(overrides)
        sub = tmp_path / f"cluster-{len(made)}"
        sub.mkdir()
        server = None
        if broker_url is None:
            # A Redis of the cluster's own: other test runs on this machine flush the
            # shared test database, which would look like a broker losing its data.
            server = RedisServer(sub / "redis", persistent=persistent_broker)
            servers.append(server)
            server.start()
            broker_url = server.url
        settings = Settings(database_url=database_url, broker_url=broker_url, **values)
        cluster = Cluster(
            settings=settings,
            client=Client(settings=settings),
            tmp=sub,
            fault_env={"GQ_FAULT_DELAY": "0.005", **(fault_env or {})},
        )
        cluster.redis = server
        made.append(cluster)
        if reconciler:
            cluster.start_reconciler()
        return cluster

    yield make
    for cluster in made:
        cluster.close()
    for server in servers:
        server.close()
