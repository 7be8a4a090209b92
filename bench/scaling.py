"""Scaling: 1 vs 2 worker processes for a tiny model, and why the ratio is what it is.

Beside genqueue's 1-worker (all cores) and 2-worker (a core each) runs, it measures one
worker pinned to 1 thread (the ideal 2-worker figure is twice that) and direct batched
`generate` with 1 and 2 threads (how much a second thread helps one process). Uses
throughput.py's measurements on the same prompt generator.

    python bench/scaling.py --prompts 512 --models tiny-gpt2 --backend services
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import throughput
from common import figure, ratio


def model_figures(model: str, work: list[str], max_new: int, backend: str) -> list[dict[str, Any]]:
    rate: dict[str, float] = {}
    for threads in (1, 2):
        print(f"[scaling] {model}: direct batched, {threads} thread(s)", flush=True)
        rate[f"direct{threads}t"] = 1 / throughput.direct_batched(model, work, max_new, threads)
    for key, workers, threads in (("w1", 1, 0), ("w1t1", 1, 1), ("w2", 2, 0)):
        print(f"[scaling] {model}: genqueue {backend}, {workers} worker(s)", flush=True)
        r = throughput.genqueue_e2e(backend, model, work, max_new, workers, threads)
        rate[key] = len(work) / (r["processing"] or r["e2e"] or 1)
    where = "SQLite embedded" if backend == "embedded" else "Redis+PostgreSQL"
    return [
        figure(f"{model}: direct batched, 1 thread", rate["direct1t"], "items/s"),
        figure(f"{model}: direct batched, 2 threads", rate["direct2t"], "items/s"),
        figure(f"{model}: genqueue {where}, 1 worker x 2 threads", rate["w1"], "items/s"),
        figure(f"{model}: genqueue {where}, 1 worker x 1 thread", rate["w1t1"], "items/s"),
        figure(f"{model}: genqueue {where}, 2 workers x 1 thread", rate["w2"], "items/s"),
        figure(
            f"{model}: 2 workers / 1 worker",
            ratio(rate["w2"], rate["w1"]),
            "x",
            target=">= 1.8",
        ),
        figure(
            f"{model}: 2 workers / (2 x 1 worker at 1 thread)",
            ratio(rate["w2"], 2 * rate["w1t1"]),
            "x",
            note="process scaling efficiency, ideal 1.0",
        ),
        figure(
            f"{model}: direct 2 threads / 1 thread",
            ratio(rate["direct2t"], rate["direct1t"]),
            "x",
            note="what a 2nd thread gives one process",
        ),
    ]


def run(
    prompts: int = 512,
    max_new_tokens: int = 32,
    models: tuple[str, ...] = ("tiny-gpt2",),
    backend: str = "services",
) -> common.Report:
    work = throughput.prompts_for(prompts)
    figs = []
    for model in models:
        figs += model_figures(model, work, max_new_tokens, backend)
    notes = [
        f"{prompts} prompts (5-200 tokens), greedy, {max_new_tokens} new tokens; genqueue "
        "rates are processing rates (first claim -> final state) on warm workers."
    ]
    return {"title": "Scaling: 1 vs 2 worker processes", "figures": figs, "notes": notes}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", type=int, default=512)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--models", nargs="+", default=["tiny-gpt2"])
    p.add_argument("--backend", choices=["embedded", "services"], default="services")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> common.Report:
    a = parse(argv)
    report = run(a.prompts, a.max_new_tokens, tuple(a.models), a.backend)
    common.print_report(report)
    return report


if __name__ == "__main__":
    main()
