"""Workers on other hosts, joined by URL alone; one host's cable pulled for 30 s mid-job
(past its lease) and another host powered off: every item ends with exactly one result,
and the cut-off worker reconnects and carries on without a restart.

Five namespaces on this machine (netns.py): a services host (Redis with a password,
PostgreSQL, the reconciler), three worker hosts (`genqueue worker`, configured only by
GENQUEUE_DATABASE_URL and GENQUEUE_BROKER_URL) and a submitter host (`genqueue submit`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.multihost.netns import DB_URL, GQ, Deployment, Hosts, unavailable

pytestmark = pytest.mark.slow

ITEMS = 2400
LEASE_S = 5.0
RECONCILE_S = 1.0
CUT_S = 30.0  # longer than the lease: the cut host's tasks are taken over meanwhile
ENV = {
    "GENQUEUE_LEASE_SECONDS": str(LEASE_S),
    "GENQUEUE_RECONCILE_INTERVAL": str(RECONCILE_S),
    "GENQUEUE_DISPATCH_GRACE_SECONDS": "3",
    "GQ_FAULT_DELAY": "0.03",
    "OMP_NUM_THREADS": "1",
}
ENGINE = ["--engine", "tests.reliability.faulty:FaultyEngine"]


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    why = unavailable()
    if why is not None:
        if IN_CI:
            pytest.fail(f"multi-host test needs network namespaces in CI: {why}")
        pytest.skip(why)
    net = Hosts(["w1", "w2", "w3", "sub"])
    try:
        net.create()
        yield net
    finally:
        net.destroy()


_ATTEMPTS = """
import json, sys
from sqlalchemy import create_engine, text
e = create_engine(sys.argv[1].replace("postgresql://", "postgresql+psycopg://"))
with e.connect() as c:
    rows = c.execute(text(
        "SELECT task_id, worker, outcome, extract(epoch FROM started_at), "
        "extract(epoch FROM finished_at) FROM attempts WHERE job_id = :j ORDER BY id"
    ), {"j": sys.argv[2]}).all()
print(json.dumps([[r[0], r[1], r[2], float(r[3]), float(r[4]) if r[4] else None] for r in rows]))
"""


def test_hosts_cut_off_and_killed_mid_job_lose_nothing(hosts: Hosts, tmp_path: Path) -> None:
    net = hosts
    dep = Deployment(net, tmp_path, ENV)
    try:
        dep.start_services()
        for host in ("w1", "w2", "w3"):
            dep.on(host, *GQ, "worker", "--model", "faulty-model", *ENGINE, "--processes", "1",
                   log=f"{host}.log")  # fmt: skip
        src = tmp_path / "in.jsonl"
        src.write_text(
            "".join(json.dumps({"prompt": f"item {i} of the job"}) + "\n" for i in range(ITEMS))
        )
        started = time.monotonic()
        submitted = dep.run_on(
            "sub", *GQ, "submit", str(src), "--model", "faulty-model", "--max-new-tokens", "3",
            "--json",
        )  # fmt: skip
        job_id = json.loads(submitted)["job_id"]

        def state() -> dict[str, Any]:
            return dict(json.loads(dep.run_on("sub", *GQ, "status", job_id, "--json")))

        deadline = time.monotonic() + 60
        while state()["counts"]["succeeded"] < ITEMS // 10:
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.5)
        w1_pids = set(net.pids("w1"))
        net.link("w1", up=False)  # its cable: TCP connections hang, nothing is refused
        cut_at = time.time()
        time.sleep(2)
        killed_at = time.time()
        assert net.kill_all("w2") > 0  # power off: every process of the host
        time.sleep(CUT_S - 2)
        net.link("w1", up=True)
        restored_at = time.time()

        deadline = time.monotonic() + 150
        final = state()
        while final["state"] not in ("completed", "completed_with_errors", "failed"):
            assert time.monotonic() < deadline, f"job did not finish: {final}"
            time.sleep(1)
            final = state()
        elapsed = time.monotonic() - started

        out = tmp_path / "out.jsonl"
        dep.run_on("sub", *GQ, "results", job_id, "-o", str(out))
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        attempts = json.loads(dep.run_on("sub", sys.executable, "-c", _ATTEMPTS, DB_URL, job_id))
        w1_alive = set(net.pids("w1"))
    finally:
        dep.stop()

    # Exactly one result per item: nothing lost, nothing duplicated.
    assert final["state"] == "completed", final
    assert sorted(line["index"] for line in lines) == list(range(ITEMS))
    assert all(line["status"] == "succeeded" for line in lines)
    assert [line["output"] for line in lines[:2]] == ["item 0 of", "item 1 of"]

    # The cut host's and the killed host's leases expired within the lease (plus a
    # reconciler pass) of the faults, and their tasks were run again by someone.
    expired = [a for a in attempts if a[2] == "lease_expired"]
    assert expired, f"no lease expired: {attempts}"
    recovery = max(a[4] - cut_at for a in expired)
    for task_id, _, _, began, _ in expired:
        assert any(a[0] == task_id and a[3] > began for a in attempts)
    print(
        f"\n{ITEMS} items in {elapsed:.1f}s; {len(attempts)} attempts; {len(expired)} leases "
        f"expired, the last {recovery:.1f}s after the first fault (lease {LEASE_S:.0f}s, the "
        f"host kill {killed_at - cut_at:.0f}s later); duplicate executions: "
        f"{final.get('duplicate_executions', 0)}"
    )
    assert recovery <= LEASE_S + (killed_at - cut_at) + 2 * RECONCILE_S + 3, recovery

    # The cut-off host's processes lived through it (no restart), and its worker claimed
    # and finished work after the cable was back.
    assert w1_pids and w1_pids <= w1_alive, (w1_pids, w1_alive)
    after = [
        a
        for a in attempts
        if a[3] > restored_at and a[2] == "done" and any(f"gq-{p}-" in a[1] for p in w1_pids)
    ]
    assert after, f"the cut-off worker did no work after reconnecting: {attempts}"
