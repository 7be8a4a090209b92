"""Scaling across hosts: 1, 2 and 4 worker hosts (one worker process each), each its own
network namespace joined to a services host (Redis, PostgreSQL, the reconciler) by URL
alone, on the dry-run engine and on the tiny GPT-2. Reports items/s over the processing
span (first claim to the job's end, from SQL) and the efficiency against N x one host.

Needs root and iproute2 (network namespaces); uses the multi-host test's deployment.
On a 2-core machine, more than 2 worker processes only share the same cores: the
efficiency past N = 2 measures that, not genqueue.

    python bench/hosts.py --dry-run-items 20000 --model-items 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import figure  # noqa: E402

from tests.multihost.netns import DB_URL, GQ, Deployment, Hosts, unavailable  # noqa: E402

_SPAN = """
import json, sys
from sqlalchemy import create_engine, text
e = create_engine(sys.argv[1].replace("postgresql://", "postgresql+psycopg://"))
with e.connect() as c:
    first = c.execute(text("SELECT extract(epoch FROM min(started_at)) FROM attempts WHERE job_id = :j"), {"j": sys.argv[2]}).scalar()
    end = c.execute(text("SELECT extract(epoch FROM finished_at) FROM jobs WHERE id = :j"), {"j": sys.argv[2]}).scalar()
print(json.dumps(float(end) - float(first)))
"""  # noqa: E501


def wait_ready(dep: Deployment, n_hosts: int, bound: float = 180) -> None:
    """Until every worker host has a live worker (its SQL heartbeat), as `genqueue
    workers` shows: otherwise the hosts that load first start alone, and the span
    measures their staggered start-up rather than N hosts at work."""
    deadline = time.monotonic() + bound
    while True:
        try:
            live = json.loads(dep.run_on("sub", *GQ, "workers", "--json"))["workers"]
        except AssertionError:  # the services are still starting
            live = []
        if len(live) >= n_hosts:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(live)} of {n_hosts} worker hosts ready after {bound} s")
        time.sleep(0.5)


def one_run(n_hosts: int, engine: str, model: str, items: int, max_new: int) -> dict[str, float]:
    names = [f"w{i}" for i in range(1, n_hosts + 1)]
    net = Hosts([*names, "sub"])
    with tempfile.TemporaryDirectory(prefix="gq-hosts-") as tmp:
        work = Path(tmp)
        net.create()
        dep = Deployment(net, work, {"OMP_NUM_THREADS": "1", "GENQUEUE_RECONCILE_INTERVAL": "1"})
        try:
            dep.start_services()
            for host in names:
                dep.on(host, *GQ, "worker", "--model", model, "--engine", engine,
                       "--processes", "1", "--threads", "1", log=f"{host}.log")  # fmt: skip
            wait_ready(dep, n_hosts)
            src = common.write_records(work / "in.jsonl", items)
            started = time.monotonic()
            out = dep.run_on(
                "sub", *GQ, "submit", str(src), "--model", model, "--max-new-tokens",
                str(max_new), "--wait", "--json", timeout=900,
            )  # fmt: skip
            e2e = time.monotonic() - started
            job_id = json.loads(out)["job_id"]
            span = float(json.loads(dep.run_on("sub", sys.executable, "-c", _SPAN, DB_URL, job_id)))
        finally:
            dep.stop()
            net.destroy()
    return {"e2e": e2e, "span": span}


def run(dry_run_items: int, model_items: int, hosts: tuple[int, ...] = (1, 2, 4)) -> common.Report:
    why = unavailable()
    if why is not None:
        return {"title": "Scaling across hosts", "figures": [], "notes": [f"skipped: {why}"]}
    common.tiny_model_dir("tiny-gpt2")
    figures: list[dict[str, Any]] = []
    for label, engine, model, items, max_new in (
        ("dry-run", "dry-run", common.DRY_RUN_MODEL, dry_run_items, 16),
        ("tiny GPT-2", "hf", "tiny-gpt2", model_items, 32),
    ):
        rates: dict[int, float] = {}
        for n in hosts:
            print(f"[hosts] {label}: {n} worker host(s), {items} items", flush=True)
            r = one_run(n, engine, model, items, max_new)
            rates[n] = items / r["span"]
            figures.append(figure(f"{label}: {n} host(s), processing", rates[n], "items/s"))
            figures.append(figure(f"{label}: {n} host(s), end to end", r["e2e"], "s"))
        for n in hosts[1:]:
            eff = rates[n] / (n * rates[hosts[0]])
            target = ">= 0.9" if n <= 2 else None
            note = "" if n <= 2 else "more processes than cores"
            figures.append(figure(f"{label}: efficiency {n} hosts", eff, "x N", target=target,
                                  note=note))  # fmt: skip
    return {
        "title": "Scaling across hosts (network namespaces)",
        "setup": f"{', '.join(map(str, hosts))} worker hosts x 1 process x 1 thread; services "
        "host with Redis + PostgreSQL; dry-run {dry_run_items} items, tiny GPT-2 {model_items} "
        "prompts".format(dry_run_items=dry_run_items, model_items=model_items),
        "figures": figures,
        "notes": [
            "The machine has 2 cores: the services host, the submitter and every worker host "
            "share them, so N = 4 cannot be faster than N = 2 here."
        ],
    }


def main(argv: list[str] | None = None) -> common.Report:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run-items", type=int, default=20_000)
    p.add_argument("--model-items", type=int, default=256)
    a = p.parse_args(argv)
    report = run(a.dry_run_items, a.model_items)
    common.print_report(report)
    return report


if __name__ == "__main__":
    main()
