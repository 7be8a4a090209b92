"""The HTTP API's two figures: requests/s for GET /v1/batches/{id}, and the time from
uploading a 100k-line OpenAI batch file to its batch being `in_progress`.

Runs `genqueue serve` (embedded SQLite + Redis, one dry-run worker) in a temporary
state dir, or `genqueue api` on the database and broker given, and drives it over
loopback with bounded loops.

    python bench/api.py [--lines 100000] [--seconds 10] [--clients 1]
    python bench/api.py --database-url postgresql://… --broker-url redis://…
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--database-url")
    p.add_argument("--broker-url")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gq-api-bench-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GENQUEUE_")},
        "GENQUEUE_HOME": str(root / "home"),
        "OMP_NUM_THREADS": "1",
    }
    gq = [sys.executable, "-m", "genqueue.cli"]
    port = free_port()
    db = args.database_url or f"sqlite:///{root / 'state' / 'genqueue.db'}"
    subprocess.run(
        [*gq, "models", "add", "tiny", "--model", "tiny-gpt2", "--engine", "dry-run"],
        env={**env, "GENQUEUE_DATABASE_URL": db},
        check=True,
        capture_output=True,
    )
    if args.database_url:
        env.update(GENQUEUE_DATABASE_URL=args.database_url, GENQUEUE_BROKER_URL=args.broker_url)
        cmd = [*gq, "api", "--port", str(port)]
    else:
        cmd = [
            *gq,
            "serve",
            "--model",
            "tiny",
            "--port",
            str(port),
            "--state-dir",
            str(root / "state"),
        ]
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.2)
        src = root / "batch.jsonl"
        with src.open("w") as f:
            for i in range(args.lines):
                body = {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": f"Question number {i}?"}],
                    "max_tokens": 8,
                }
                f.write(
                    json.dumps(
                        {
                            "custom_id": f"r{i}",
                            "method": "POST",
                            "url": "/v1/chat/completions",
                            "body": body,
                        }
                    )
                    + "\n"
                )
        http = httpx.Client(base_url=url, headers={"Authorization": "Bearer x"}, timeout=600)
        t0 = time.monotonic()
        with src.open("rb") as fh:
            up = http.post(
                "/v1/files", files={"file": ("batch.jsonl", fh)}, data={"purpose": "batch"}
            )
        up.raise_for_status()
        t_up = time.monotonic() - t0
        created = http.post(
            "/v1/batches",
            json={
                "input_file_id": up.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        created.raise_for_status()
        t_create = time.monotonic() - t0
        batch_id = created.json()["id"]
        while True:
            status = http.get(f"/v1/batches/{batch_id}").json()["status"]
            if status != "validating":
                break
            time.sleep(0.05)
        t_progress = time.monotonic() - t0
        print(
            f"{args.lines} lines ({src.stat().st_size / 2**20:.1f} MB): upload {t_up:.2f} s, "
            f"batch created (validating) at {t_create:.2f} s, {status} at {t_progress:.2f} s"
        )
        counts = [0] * args.clients
        stop = time.monotonic() + args.seconds

        def poll(n: int) -> None:
            with httpx.Client(base_url=url, headers={"Authorization": "Bearer x"}) as c:
                while time.monotonic() < stop:
                    assert c.get(f"/v1/batches/{batch_id}").status_code == 200
                    counts[n] += 1

        threads = [threading.Thread(target=poll, args=(n,)) for n in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = http.get(f"/v1/batches/{batch_id}").json()
        print(
            f"GET /v1/batches/{{id}}: {sum(counts) / args.seconds:.0f} requests/s with "
            f"{args.clients} client(s) over {args.seconds:.0f} s (batch {final['status']}, "
            f"{final['request_counts']})"
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
