"""Start-up: a cold `genqueue run` beside a plain script doing the same work, with a
timeline of where the cold run's seconds go.

The plain script is what a user would write instead: start Python, import torch and
transformers, load the model, run length-sorted batches of 32 through `generate` and
write a JSONL file. Both run as fresh processes on the same items, alternately,
`--repeats` times; medians are reported (the machine is shared).

A third run per round starts the workers without the fork server (each imports torch
and transformers itself), to show what forking them from one process saves.

The timeline splits the cold run by wall clock and the job's SQL timestamps:
  launch -> job created        Python + CLI imports, embedded Redis + SQLite, reading,
                               validating and storing the input (workers start meanwhile)
  job created -> first claim   what is left of the workers' start-up (imports, model load)
  first claim -> job final     processing
  job final -> exit            noticing the end, export, shutdown

    python bench/startup.py --items 512 --max-new-tokens 32 --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import throughput
from common import figure

TIMEOUT = 900.0

#: The plain script: argv = model dir, input JSONL, output JSONL, max new tokens.
PLAIN = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, src, dst, max_new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(model_dir)
tok.padding_side = "left"
tok.pad_token = tok.pad_token or tok.eos_token
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
rows = [json.loads(line) for line in open(src)]
prompts = [r["prompt"] for r in rows]
lengths = [len(ids) for ids in tok(prompts)["input_ids"]]
order = sorted(range(len(prompts)), key=lambda i: lengths[i])
texts = {}
with torch.inference_mode():
    for s in range(0, len(order), 32):
        idx = order[s : s + 32]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        for i, t in zip(idx, tok.batch_decode(new, skip_special_tokens=True)):
            texts[i] = t
with open(dst, "w") as f:
    for i, r in enumerate(rows):
        f.write(json.dumps({"custom_id": r["custom_id"], "output": texts[i]}) + "\n")
"""


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def plain_run(model_dir: Path, src: Path, dst: Path, max_new: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", PLAIN, str(model_dir), str(src), str(dst), str(max_new)],
        check=True,
        timeout=TIMEOUT,
        cwd="/tmp",
    )
    return time.perf_counter() - t0


def cold_run(
    model: str, src: Path, d: Path, max_new: int, workers: int, fork_server: bool = True
) -> dict[str, float]:
    """One cold `genqueue run --json` in a fresh state dir: wall seconds and timeline."""
    state = d / f"state-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "genqueue.cli", "run", str(src), "--model", model]
    cmd += ["--max-new-tokens", str(max_new), "--workers", str(workers), "--device", "cpu"]
    cmd += ["--json", "--state-dir", str(state), "-o", str(d / "out.jsonl")]
    env = {**os.environ, "GENQUEUE_FORK_SERVER": "true" if fork_server else "false"}
    launch, t0 = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd="/tmp", env=env)
    wall, end = time.perf_counter() - t0, time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"genqueue run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    st = json.loads(proc.stdout)
    created, started, finished = (_ts(st[k]) for k in ("created_at", "started_at", "finished_at"))
    return {
        "wall": wall,
        "to_created": created - launch,
        "to_first_claim": started - created,
        "processing": finished - started,
        "after": end - finished,
    }


def run(items: int = 512, max_new: int = 32, workers: int = 2, repeats: int = 3) -> common.Report:
    model = "tiny-gpt2"
    model_dir = common.tiny_model_dir(model)
    load0 = os.getloadavg()[0]
    plain: list[float] = []
    cold: list[dict[str, float]] = []
    exec_walls: list[float] = []
    with common.scratch_dir("startup-") as d:
        src = common.write_jsonl(d / "in.jsonl", throughput.prompts_for(items))
        for i in range(repeats):
            print(f"[startup] round {i + 1}/{repeats}: plain script", flush=True)
            plain.append(plain_run(model_dir, src, d / "plain.jsonl", max_new))
            print(f"[startup] round {i + 1}/{repeats}: cold genqueue run", flush=True)
            cold.append(cold_run(model, src, d, max_new, workers))
            print(f"[startup] round {i + 1}/{repeats}: cold run, no fork server", flush=True)
            exec_walls.append(cold_run(model, src, d, max_new, workers, False)["wall"])
            print(
                f"[startup]   plain {plain[-1]:.2f} s, genqueue {cold[-1]}, "
                f"without the fork server {exec_walls[-1]:.2f} s",
                flush=True,
            )
    med = {k: statistics.median(c[k] for c in cold) for k in cold[0]}
    plain_med = statistics.median(plain)
    walls = [c["wall"] for c in cold]
    ratios = [c["wall"] / p for c, p in zip(cold, plain, strict=True)]
    figs = [
        figure(f"cold `genqueue run --workers {workers}`, wall", med["wall"], "s", target="<= 10"),
        figure("plain script (python + load + batched generate), wall", plain_med, "s"),
        figure(
            "cold genqueue run / plain script",
            statistics.median(ratios),
            "x",
            target="<= 1.1",
            note="median of the per-round ratios",
        ),
        figure(
            "cold run without the fork server (GENQUEUE_FORK_SERVER=false), wall",
            statistics.median(exec_walls),
            "s",
        ),
        figure(
            "cold run / cold run without the fork server",
            statistics.median(c["wall"] / e for c, e in zip(cold, exec_walls, strict=True)),
            "x",
            note="median of the per-round ratios",
        ),
        figure("timeline: launch -> job created", med["to_created"], "s"),
        figure("timeline: job created -> first claimed task", med["to_first_claim"], "s"),
        figure("timeline: first claim -> job final (processing)", med["processing"], "s"),
        figure("timeline: job final -> process exit (export, shutdown)", med["after"], "s"),
    ]
    notes = [
        f"{items} tiny-gpt2 prompts (5-200 tokens), {max_new} new tokens, greedy; "
        f"{repeats} rounds, plain script and cold run alternately, medians. "
        f"Per-round wall: plain {', '.join(f'{p:.1f}' for p in plain)} s; genqueue "
        f"{', '.join(f'{w:.1f}' for w in walls)} s; without the fork server "
        f"{', '.join(f'{w:.1f}' for w in exec_walls)} s.",
        f"Load average (1 min) {load0:.2f} before, {os.getloadavg()[0]:.2f} after.",
    ]
    return {
        "title": "Start-up: cold `genqueue run` vs a plain script",
        "figures": figs,
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> common.Report:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=512)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    report = run(a.items, a.max_new_tokens, a.workers, a.repeats)
    common.print_report(report)
    return report


if __name__ == "__main__":
    main()
