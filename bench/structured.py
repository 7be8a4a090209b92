"""Structured outputs: what constrained decoding costs against unconstrained decoding.

Runs the same prompts through the hf engine and the worker's batching layer (no queue:
the figures are the engine's), unconstrained and under each constraint kind. Items/s is
what a user sees, but a constraint changes the outputs' lengths (labels end after a few
tokens, unconstrained text runs to max_new_tokens), so the cost figure is the share of
generation time spent computing and applying the grammar masks (timed inside the
logits processor), with its cost per row and step. Also measures log-probabilities and
label scores, and llguidance's compile time.

    python bench/structured.py --prompts 256 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import figure, ratio

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "sure": {"type": "boolean"},
    },
    "required": ["label", "stars", "sure"],
    "additionalProperties": False,
}
LABELS = ("positive", "negative", "neutral", "mixed")
CASES: dict[str, dict[str, Any]] = {
    "unconstrained": {},
    "choices (4 labels)": {"choices": LABELS},
    "regex": {"regex": r"[A-Z]{2}-[0-9]{4}"},
    "json_schema": {"json_schema": SCHEMA},
    "json_object": {"json_object": True},
}


MASK = {"seconds": 0.0, "row_steps": 0}


def _timed_mask() -> None:
    """Time every GrammarMask call (seconds, and rows x steps masked)."""
    from genqueue.worker.engines import constrained

    original = constrained.GrammarMask.__call__

    def timed(self: Any, input_ids: Any, scores: Any) -> Any:
        t0 = time.perf_counter()
        out = original(self, input_ids, scores)
        MASK["seconds"] += time.perf_counter() - t0
        MASK["row_steps"] += len(self.rows)
        return out

    constrained.GrammarMask.__call__ = timed


def run_case(engine: Any, prompts: list[str], params: list[Any]) -> tuple[float, int]:
    """(seconds, generated tokens) for one pass over the prompts."""
    from genqueue.worker.batching import BatchPolicy, generate_all
    from genqueue.worker.engines.base import GenRequest

    reqs = [
        GenRequest(key=i, prompt=p, params=params[i % len(params)], seed=i)
        for i, p in enumerate(prompts)
    ]
    t0 = time.perf_counter()
    results = [
        r for part in generate_all(engine, reqs, BatchPolicy(max_batch_size=32)) for r in part
    ]
    elapsed = time.perf_counter() - t0
    assert all(r.error is None for r in results), [r.error for r in results if r.error][:3]
    return elapsed, sum(r.completion_tokens for r in results)


def grammar_figures(engine: Any) -> list[dict[str, Any]]:
    """llguidance on this tokenizer: compile ms per grammar (once per worker process)."""
    import llguidance

    from genqueue.params import GenerationParams

    out = []
    for name in ("choices (4 labels)", "regex", "json_schema"):
        grammar = GenerationParams(**CASES[name]).grammar()
        assert grammar is not None
        t0 = time.perf_counter()
        for _ in range(20):
            m = llguidance.LLMatcher(engine.grammars.llg_tokenizer(), grammar, log_level=0)
            m.compute_bitmask()
        out.append(
            figure(
                f"llguidance compile + first mask: {name}",
                (time.perf_counter() - t0) / 20 * 1000,
                "ms",
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny-gpt2")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    common.print_report(run(args.prompts, args.max_new_tokens, args.model, args.threads))


def run(n: int, new: int, model: str = "tiny-gpt2", threads: int = 1) -> common.Report:
    """The report for `n` prompts and `new` tokens at most (see the module docstring)."""
    import torch

    torch.set_num_threads(threads)
    from genqueue.params import GenerationParams
    from genqueue.worker.engines import load_engine
    from genqueue.workeropts import WorkerOptions

    engine = load_engine(
        WorkerOptions(model=str(common.tiny_model_dir(model)), engine="hf", device="cpu")
    )
    prompts = common.make_prompts(n, engine.tokenizer, lo=5, hi=60)
    figures: list[dict[str, Any]] = []
    rates: dict[str, tuple[float, float]] = {}
    masks: dict[str, tuple[float, float]] = {}
    _timed_mask()
    for sampling in (False, True):
        mode = "seeded sampling" if sampling else "greedy"
        extra: dict[str, Any] = {"do_sample": True, "seed": 1} if sampling else {}
        cases = dict(CASES)
        cases["mixed (all five in each batch)"] = {}
        for name, constraint in cases.items():
            if name.startswith("mixed"):
                params = [
                    GenerationParams(max_new_tokens=new, **extra, **c) for c in CASES.values()
                ]
            else:
                params = [GenerationParams(max_new_tokens=new, **extra, **constraint)]
            run_case(engine, prompts[:32], params)  # warm-up (and the grammar compile)
            MASK.update(seconds=0.0, row_steps=0)
            secs, tokens = run_case(engine, prompts, params)
            rates[f"{mode}/{name}"] = (len(prompts) / secs, tokens / secs)
            masks[f"{mode}/{name}"] = (
                MASK["seconds"] / secs,
                MASK["seconds"] / max(1, MASK["row_steps"]),
            )
            print(
                f"[structured] {mode} {name}: {len(prompts) / secs:.1f} items/s, "
                f"{tokens / secs:.0f} tokens/s",
                flush=True,
            )
        base_items = rates[f"{mode}/unconstrained"][0]
        for name in cases:
            items, toks = rates[f"{mode}/{name}"]
            figures.append(figure(f"{mode}, {name}", items, "items/s", note=f"{toks:.0f} tokens/s"))
            if name == "unconstrained":
                continue
            share, per_row = masks[f"{mode}/{name}"]
            figures.append(
                figure(f"{mode}, {name} / unconstrained", ratio(items, base_items), "x items/s")
            )
            figures.append(
                figure(
                    f"{mode}, {name}: time in the grammar mask",
                    share * 100,
                    "% of generation",
                    target="<= 25",
                    note=f"{per_row * 1e6:.0f} µs per row and step",
                )
            )
    for label, kw in (
        ("logprobs + top_logprobs 5", {"logprobs": True, "top_logprobs": 5}),
        ("choices + score_choices", {"choices": LABELS, "score_choices": True}),
    ):
        params = [GenerationParams(max_new_tokens=new, **kw)]
        run_case(engine, prompts[:32], params)
        secs, tokens = run_case(engine, prompts, params)
        ref = "greedy/unconstrained" if "logprobs" in label else "greedy/choices (4 labels)"
        figures.append(
            figure(
                f"greedy, {label} / without",
                ratio(tokens / secs, rates[ref][1]),
                "x tokens/s",
                note=f"{len(prompts) / secs:.0f} items/s",
                target=">= 0.5" if "logprobs" in label else None,
            )
        )
    figures += grammar_figures(engine)
    engine.close()
    return {
        "title": f"Structured outputs: constrained vs unconstrained ({model})",
        "setup": (
            f"{n} prompts (5-60 tokens), max_new_tokens {new}, hf engine on CPU, "
            f"{threads} thread(s), micro-batches of <= 32; the engine and the batching "
            "layer only (no queue)."
        ),
        "figures": figures,
    }


if __name__ == "__main__":
    main()
