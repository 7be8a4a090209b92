"""Shared helpers for the benchmarks: reporting, the workload, the services.

Every benchmark returns a `Report` (a plain dict of figures) so `run_all.py` can print
the tables side by side and rewrite RESULTS.md. Live deployments are in deploy.py,
child-process measurement in procs.py. Nothing here is a test.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
#: Built tiny models and scratch state live here (git-ignored), not in the user's cache.
CACHE = BENCH_DIR / ".cache"
REDIS_URL = os.environ.get("GENQUEUE_BENCH_REDIS", "redis://127.0.0.1:6379/11")
PG_ADMIN_URL = os.environ.get("GENQUEUE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

os.environ.setdefault("GENQUEUE_HOME", str(CACHE / "home"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

Report = dict[str, Any]
#: The model name dry-run jobs use: any name works, the dry-run engine loads nothing.
DRY_RUN_MODEL = "bench-dry-run"


# --- reporting ---------------------------------------------------------------------------


def figure(
    name: str, value: float | None, unit: str, *, target: str | None = None, note: str = ""
) -> dict[str, Any]:
    """One measured figure; `target` like ">= 1.2" or "<= 60" is checked against `value`."""
    met: bool | None = None
    if target is not None and value is not None:
        op, bound = target.split()
        met = value >= float(bound) if op == ">=" else value <= float(bound)
    return {"name": name, "value": value, "unit": unit, "target": target, "met": met, "note": note}


def fmt_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render(report: Report) -> str:
    """A report as a markdown table (figure, value, unit, target, met) plus its notes."""
    lines = [f"### {report['title']}", ""]
    if report.get("setup"):
        lines += [report["setup"], ""]
    lines += ["| figure | value | unit | target | met |", "|---|---:|---|---|---|"]
    for f in report["figures"]:
        met = {True: "yes", False: "**NO**", None: ""}[f["met"]]
        name = f["name"] + (f" ({f['note']})" if f["note"] else "")
        row = [name, fmt_value(f["value"]), f["unit"], f["target"] or "", met]
        lines.append("| " + " | ".join(row) + " |")
    for note in report.get("notes", []):
        lines.append(f"\n- {note}")
    return "\n".join(lines) + "\n"


def print_report(report: Report) -> None:
    print(render(report), flush=True)


def machine_info() -> dict[str, str]:
    """Cores, RAM, CPU model, torch threads, date and commit, for RESULTS.md."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        import torch

        torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads"
    except ImportError:
        torch_info = "torch not installed"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "ram": f"{mem_gib:.1f} GiB",
        "torch": torch_info,
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": (commit or "unknown") + (" (+ uncommitted changes)" if dirty else ""),
    }


# --- workload ----------------------------------------------------------------------------


def tiny_model_dir(name: str) -> Path:
    """Build (once) the tiny model `name` where workers will look for it."""
    from genqueue.protocol import resolve_model_ref
    from genqueue.worker.tinymodels import ensure_tiny_model

    return ensure_tiny_model(name, Path(resolve_model_ref(name)))


def vocabulary(size: int = 2000, seed: int = 7) -> list[str]:
    """Pseudo-words from syllables, fixed seed: the same vocabulary on every machine."""
    rng = random.Random(seed)
    syl = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"] + ["the", "and", "ing", "er"]
    return ["".join(rng.choice(syl) for _ in range(rng.randint(1, 3))) for _ in range(size)]


def make_prompts(
    n: int, tokenizer: Any, *, lo: int = 5, hi: int = 200, seed: int = 11
) -> list[str]:
    """`n` prompts whose token counts (under `tokenizer`) are uniform in [lo, hi]."""
    rng = random.Random(seed)
    vocab = vocabulary()
    # Byte-level BPE never merges across pre-tokenised words, so counts add up per word.
    cost = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in vocab}
    prompts = []
    for _ in range(n):
        target, words, used = rng.randint(lo, hi), [], 0
        while used < target:
            w = rng.choice(vocab)
            if used + cost[w] > target and used >= lo:
                break
            words.append(w)
            used += cost[w]
        prompts.append(" ".join(words))
    return prompts


def write_records(path: Path, n: int, *, seed: int = 3) -> Path:
    """`n` JSONL records of 5-40 vocabulary words, streamed to disk (flat memory)."""
    import json

    rng = random.Random(seed)
    vocab = vocabulary()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = " ".join(rng.choices(vocab, k=rng.randint(5, 40)))
            f.write(json.dumps({"custom_id": f"r{i}", "prompt": words}) + "\n")
    return path


def write_jsonl(path: Path, prompts: Sequence[str]) -> Path:
    import json

    with open(path, "w", encoding="utf-8") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"custom_id": f"p{i}", "prompt": p}) + "\n")
    return path


# --- services ------------------------------------------------------------------------------


def flush_redis(url: str = REDIS_URL) -> None:
    import redis

    redis.Redis.from_url(url, socket_timeout=10).flushdb()


@contextlib.contextmanager
def pg_database(prefix: str = "gq_bench") -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=CACHE) as d:
        yield Path(d)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b
