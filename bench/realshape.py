"""Steady state on models of real shape: direct batched `generate` vs genqueue processing.

bench-llama-25m (Llama, GQA 8/2, RoPE) and optionally bench-gpt2-124m (GPT-2 small),
built offline like the tiny models. Two workloads on the same prompts (5-200 tokens):
  fixed     every item 32 new tokens
  variable  per-item max_new_tokens uniform in 8-128, and stop strings
Direct = one process, all cores, length-sorted batches of 32 (the variable workload
sorted by output limit, each batch run to its largest limit with HF's stop_strings).
genqueue = warm workers on the embedded stack, processing = first claim -> final state,
with 2 workers x 1 thread and 1 worker x 2 threads. Rounds alternate direct and genqueue
(`--repeats`), medians reported; items/s and generated tokens/s.

    python bench/realshape.py --prompts 256 --repeats 3 --models bench-llama-25m
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import deploy
import throughput
from common import figure

TIMEOUT = 1800.0
BATCH = 32
#: Stop strings of the variable workload (frequent enough in the tiny BPE's output).
STOPS = ("the", "ing")


def workload(n: int, variable: bool, seed: int = 5) -> list[dict[str, Any]]:
    """Items: prompt and, for the variable workload, per-item params."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for p in throughput.prompts_for(n):
        item: dict[str, Any] = {"prompt": p}
        if variable:
            item["params"] = {"max_new_tokens": rng.randint(8, 128)}
            if rng.random() < 0.5:
                item["params"]["stop"] = list(STOPS)
        out.append(item)
    return out


def _limit(item: dict[str, Any]) -> int:
    return int(item.get("params", {}).get("max_new_tokens", 32))


def direct(model_name: str, items: list[dict[str, Any]], threads: int) -> tuple[float, int]:
    """(seconds, generated tokens) of one pass, after a warm-up batch."""
    import torch

    torch.set_num_threads(threads)
    model, tok, _ = throughput.load_hf(model_name)
    prompts = [it["prompt"] for it in items]
    lengths = [len(ids) for ids in tok(prompts)["input_ids"]]
    order = sorted(range(len(items)), key=lambda i: (_limit(items[i]), lengths[i]))
    eos = tok.eos_token_id

    def batch(idx: list[int]) -> int:
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True)
        kw: dict[str, Any] = {}
        if any("stop" in items[i].get("params", {}) for i in idx):
            kw = {"stop_strings": list(STOPS), "tokenizer": tok}
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max(_limit(items[i]) for i in idx),
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                **kw,
            )
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        count = 0
        for i, row in zip(idx, new, strict=True):
            row = row[: _limit(items[i])]
            count += row.index(eos) + 1 if eos in row else len(row)
        return count

    batch(order[:BATCH])  # warm-up
    t0 = time.perf_counter()
    tokens = sum(batch(order[s : s + BATCH]) for s in range(0, len(order), BATCH))
    return time.perf_counter() - t0, tokens


def genqueue_runs(
    model: str, items: list[dict[str, Any]], workers: int, threads: int, repeats: int
) -> list[tuple[float, int]]:
    """(processing seconds, generated tokens) per repeat, on the same warm workers."""
    import sqlalchemy as sa

    out = []
    with deploy.deployment("embedded") as dep:
        dep.start_workers(model, workers, threads=threads)
        dep.wait_ready(model, workers)
        for _ in range(repeats):
            job, t = deploy.timed_job(
                dep.client,
                iter(items),
                timeout=TIMEOUT,
                kind="generate",
                model=model,
                max_new_tokens=32,
                poll=0.2,
            )
            with dep.client.store.engine.connect() as conn:
                tokens = conn.execute(
                    sa.text("SELECT sum(completion_tokens) FROM results WHERE job_id = :j"),
                    {"j": job},
                ).scalar()
            out.append((t.processing or float("nan"), int(tokens or 0)))
    return out


def model_figures(
    model: str, n: int, repeats: int, variable: bool, configs: list[tuple[int, int]] | None = None
) -> list[dict[str, Any]]:
    cores = os.cpu_count() or 1
    items = workload(n, variable)
    name = f"{model}, {'variable 8-128 + stops' if variable else 'fixed 32'} new tokens"
    print(f"[realshape] {name}: direct x{repeats}", flush=True)
    d = [direct(model, items, cores) for _ in range(repeats)]
    print(f"[realshape]   direct (s, tokens): {d}", flush=True)
    configs = configs or ([(2, 1), (1, cores)] if cores >= 2 else [(1, 1)])
    g: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for w, th in configs:
        print(f"[realshape] {name}: genqueue {w} worker(s) x {th} thread(s)", flush=True)
        g[(w, th)] = genqueue_runs(model, items, w, th, repeats)
        print(f"[realshape]   genqueue {w}x{th} (s, tokens): {g[(w, th)]}", flush=True)
    d_s = statistics.median(s for s, _ in d)
    d_tok = statistics.median(t for _, t in d)
    figs = [
        figure(f"{name}: direct batched ({cores} threads)", d_s / n * 1000, "ms/item"),
        figure(f"{name}: direct batched", d_tok / d_s, "tokens/s"),
    ]
    for (w, th), runs in g.items():
        s = statistics.median(x for x, _ in runs)
        tok = statistics.median(t for _, t in runs)
        label = f"{name}: genqueue processing, {w} worker(s) x {th} thread(s)"
        figs.append(figure(label, s / n * 1000, "ms/item"))
        figs.append(figure(label, tok / s, "tokens/s"))
        figs.append(
            figure(
                f"{name}: genqueue {w}x{th} / direct (items/s)",
                d_s / s,
                "x",
                target=">= 1.0" if model == "bench-llama-25m" else None,
            )
        )
    return figs


def run(
    prompts: int = 256,
    repeats: int = 3,
    models: tuple[str, ...] = ("bench-llama-25m",),
    variable: bool = True,
    configs: list[tuple[int, int]] | None = None,
) -> common.Report:
    load0 = os.getloadavg()[0]
    figs: list[dict[str, Any]] = []
    for model in models:
        common.tiny_model_dir(model)
        figs += model_figures(model, prompts, repeats, False, configs)
        if variable:
            figs += model_figures(model, prompts, repeats, True, configs)
    notes = [
        f"{prompts} prompts (5-200 tokens), greedy; medians of {repeats} passes. Direct: one "
        "process, all cores; genqueue: warm workers (embedded stack), processing = first "
        "claim -> job final. tokens/s counts generated tokens (to EOS, stop string or limit).",
        f"Load average (1 min) {load0:.2f} before, {os.getloadavg()[0]:.2f} after.",
    ]
    return {"title": "Throughput: models of real shape", "figures": figs, "notes": notes}


def main(argv: list[str] | None = None) -> common.Report:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["bench-llama-25m"])
    p.add_argument("--no-variable", action="store_true", help="only the fixed-length workload")
    p.add_argument(
        "--configs", nargs="+", help="genqueue workers x threads, e.g. 2x1 1x2 (default both)"
    )
    a = p.parse_args(argv)
    configs = [tuple(int(x) for x in c.split("x")) for c in a.configs] if a.configs else None
    with contextlib.suppress(KeyboardInterrupt):
        report = run(
            a.prompts,
            a.repeats,
            tuple(a.models),
            variable=not a.no_variable,
            configs=configs,  # type: ignore[arg-type]
        )
        common.print_report(report)
        return report
    raise SystemExit(1)


if __name__ == "__main__":
    main()
