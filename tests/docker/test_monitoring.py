"""The monitoring files agree with the code: every metric the Grafana dashboard queries
is one /metrics exposes, and Prometheus scrapes the compose file's API service."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from genqueue.api.deps import ApiContext
from genqueue.api.metrics import registry
from genqueue.settings import Settings
from genqueue.storage.db import Store

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _exposed(tmp_path: Path) -> set[str]:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    store.migrate()
    ctx = ApiContext(Settings(), store, None, tmp_path, ThreadPoolExecutor(1))
    try:
        text = generate_latest(registry(ctx)).decode()
    finally:
        ctx.background.shutdown()
        store.dispose()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + x for x in ("_bucket", "_count", "_sum"))
    return names


def test_the_dashboard_queries_only_exposed_metrics(tmp_path: Path) -> None:
    dashboard = json.loads((DOCKER / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bgenqueue_[a-z_]+", e)}
    exposed = _exposed(tmp_path)
    assert used and used <= exposed, sorted(used - exposed)


def test_prometheus_scrapes_the_api_service() -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api:8000"]
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    assert services["api"]["command"][-1] == "8000"
    assert "prometheus.yml" in services["prometheus"]["volumes"][0]
    assert "--broker=redis://" in " ".join(services["flower"]["command"])
