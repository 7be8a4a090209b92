"""CPU speed options side by side: float32 vs bfloat16 vs dynamic int8 (`--quantize int8`)
on a ~25 M parameter Llama-architecture model (8 layers, hidden 512, intermediate 1376,
8 heads / 2 KV heads, RoPE, the tiny tokenizer's vocabulary, random weights).

Speed: the same prompts through the hf engine and the worker's batching layer (what a
worker runs), ms per item and generated tokens/s, each precision in the same process
one after the other, best of `--repeats` passes. Agreement: every prompt's greedy
continuation as token ids (plain batched `generate` on the same loaded model), compared
with float32 position by position: the share of identical tokens, the share of outputs
identical throughout, and the mean share of tokens before the first difference; and,
teacher-forced on float32's continuation, the share of positions whose most likely next
token is float32's (one difference then does not derail every later token). Measured
twice: on random weights (near-ties everywhere: a pessimistic bound) and on the same
shape briefly trained on text from a fixed word chain (confident choices, closer to a
real model); speed on the trained one (the weights do not change the arithmetic).

    python bench/cpu_options.py --prompts 64 --max-new-tokens 32 --threads 2
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

MODES: dict[str, dict[str, str]] = {
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"quantize": "int8"},
}
#: Weight scale of the random model: larger than Llama's 0.02 init, which would make
#: every greedy choice a near-tie.
INIT_STD = 0.06
#: The trained model: this many optimiser steps (or seconds, whichever comes first) on
#: text from a fixed random word chain, so that its next-token choices are confident
#: like a real model's, not near-ties as with random weights.
TRAIN_STEPS, TRAIN_SECONDS = 300, 240.0


def _chain(seed: int = 9) -> tuple[list[str], dict[str, list[str]]]:
    """200 pseudo-words, each with 3 likely successors: text with learnable structure."""
    import random

    rng = random.Random(seed)
    words = common.vocabulary()[:200]
    return words, {w: rng.sample(words, 3) for w in words}


def chain_texts(n: int, words_per_text: tuple[int, int], seed: int) -> list[str]:
    """`n` texts walking the word chain (10% random jumps)."""
    import random

    rng = random.Random(seed)
    words, succ = _chain()
    out = []
    for _ in range(n):
        w = rng.choice(words)
        text = [w]
        for _ in range(rng.randint(*words_per_text) - 1):
            w = rng.choice(succ[w]) if rng.random() < 0.9 else rng.choice(words)
            text.append(w)
        out.append(" ".join(text))
    return out


def llama_dir(trained: bool) -> Path:
    """Build (once) the ~25 M Llama-shape model beside the benchmarks' tiny models:
    random weights, or briefly trained on the word chain."""
    out = common.CACHE / ("llama-25m-trained" if trained else "llama-25m")
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(common.tiny_model_dir("tiny-gpt2"))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config)
    if trained:
        _train(model, tok)
    else:
        gen = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for _name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
                if param.ndim >= 2:
                    param.copy_(torch.randn(param.shape, generator=gen) * INIT_STD)
    model.generation_config.bos_token_id = tok.eos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def _train(model: Any, tok: Any) -> None:
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    t0, step, loss = time.monotonic(), 0, float("nan")
    while step < TRAIN_STEPS and time.monotonic() - t0 < TRAIN_SECONDS:
        texts = chain_texts(8, (30, 40), seed=1000 + step)
        ids = tok(texts, truncation=True, max_length=64)["input_ids"]
        width = min(len(x) for x in ids)  # equal lengths: no padding to mask
        batch = torch.tensor([x[:width] for x in ids])
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        loss, step = float(out.loss.detach()), step + 1
    print(f"trained {step} steps in {time.monotonic() - t0:.0f} s, loss {loss:.2f}", flush=True)
    model.eval()


def speed(engine: Any, prompts: list[str], new: int, repeats: int) -> tuple[float, int]:
    """(best seconds over `repeats` passes, generated tokens) through the batching layer."""
    from genqueue.params import GenerationParams
    from genqueue.worker.batching import BatchPolicy, generate_all
    from genqueue.worker.engines.base import GenRequest

    params = GenerationParams(max_new_tokens=new, min_new_tokens=new)
    reqs = [GenRequest(key=i, prompt=p, params=params) for i, p in enumerate(prompts)]
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        results = [r for part in generate_all(engine, reqs, BatchPolicy()) for r in part]
        best = min(best, time.perf_counter() - t0)
        assert all(r.error is None for r in results), [r.error for r in results if r.error][:3]
        tokens = sum(r.completion_tokens for r in results)
    return best, tokens


def greedy_ids(engine: Any, prompts: list[str], new: int, batch: int = 16) -> list[list[int]]:
    """Each prompt's greedy continuation (token ids), left-padded batches."""
    import torch

    tok, out = engine.tokenizer, []
    for start in range(0, len(prompts), batch):
        enc = tok(prompts[start : start + batch], return_tensors="pt", padding=True)
        with torch.inference_mode():
            ids = engine.model.generate(
                **enc,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        out += ids[:, enc["input_ids"].shape[1] :].tolist()
    return out


def forced_ids(
    engine: Any, prompts: list[str], ref: list[list[int]], batch: int = 16
) -> list[list[int]]:
    """Teacher-forced: each position's most likely next token given the prompt and
    float32's continuation so far (one forward pass), so one early difference does not
    count against every later token."""
    import torch

    tok, out = engine.tokenizer, []
    for start in range(0, len(prompts), batch):
        enc = tok(prompts[start : start + batch], return_tensors="pt", padding=True)
        cont = torch.tensor(ref[start : start + batch])
        ids = torch.cat([enc["input_ids"], cont], dim=1)
        mask = torch.cat([enc["attention_mask"], torch.ones_like(cont)], dim=1)
        with torch.inference_mode():
            logits = engine.model(input_ids=ids, attention_mask=mask).logits
        width = cont.shape[1]
        start_pos = enc["input_ids"].shape[1] - 1
        out += logits[:, start_pos : start_pos + width].argmax(-1).tolist()
    return out


def agreement(ref: list[list[int]], got: list[list[int]]) -> tuple[float, float, float]:
    """(identical tokens, identical outputs, tokens before the first difference), shares."""
    same = total = whole = prefix = 0
    for a, b in zip(ref, got, strict=True):
        n = max(len(a), len(b))
        pairs = list(zip(a, b, strict=False))
        same += sum(x == y for x, y in pairs)
        total += n
        whole += a == b
        first = next((i for i, (x, y) in enumerate(pairs) if x != y), len(pairs))
        prefix += first / n if n else 1
    return same / max(1, total), whole / max(1, len(ref)), prefix / max(1, len(ref))


def run(n: int, new: int, threads: int, repeats: int = 2) -> common.Report:
    import torch

    torch.set_num_threads(threads)
    from genqueue.worker.engines import load_engine
    from genqueue.worker.engines.precision import cpu_flags
    from genqueue.worker.errors import EngineError
    from genqueue.workeropts import WorkerOptions

    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    ms: dict[str, float] = {}
    params = 0
    for variant in ("trained", "random"):
        model = llama_dir(trained=variant == "trained")
        ref: list[list[int]] | None = None
        prompts: list[str] = []
        for mode, opts in MODES.items():
            try:
                engine = load_engine(WorkerOptions(model=str(model), device="cpu", **opts))
            except EngineError as exc:
                notes.append(f"{mode}: refused: {exc}")
                continue
            if not prompts:
                if variant == "trained":
                    prompts = chain_texts(n, (3, 30), seed=77)
                else:
                    prompts = common.make_prompts(n, engine.tokenizer, lo=5, hi=60)
                params = sum(p.numel() for p in engine.model.parameters())
            if variant == "trained":  # the speed is the same for both weight sets
                speed(engine, prompts[:8], 4, 1)  # warm-up (first-call allocations)
                seconds, tokens = speed(engine, prompts, new, repeats)
                ms[mode] = seconds * 1000 / n
                figures.append(figure(f"{mode}: ms per item", ms[mode], "ms"))
                figures.append(figure(f"{mode}: generated tokens/s", tokens / seconds, "tok/s"))
            ids = greedy_ids(engine, prompts, new)
            if ref is None:
                ref = ids
            else:
                same, whole, prefix = agreement(ref, ids)
                forced, _, _ = agreement(ref, forced_ids(engine, prompts, ref))
                for name, value in (
                    ("greedy tokens identical to float32", same),
                    ("outputs identical to float32", whole),
                    ("tokens before the first difference", prefix),
                    ("next token equal to float32's on its prefix", forced),
                ):
                    figures.append(figure(f"{variant} weights, {mode}: {name}", value * 100, "%"))
            engine.close()
    for mode in ("bfloat16", "int8"):
        if mode in ms and "float32" in ms:
            figures.append(
                figure(f"speed-up of {mode} over float32", ratio(ms["float32"], ms[mode]), "x")
            )
    flags = cpu_flags() or frozenset()
    native = [f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni", "amx_int8") if f in flags]
    return {
        "title": "CPU speed options: float32 vs bfloat16 vs int8 (Llama-shape model)",
        "setup": (
            f"{params / 1e6:.1f} M parameters (8 layers, hidden 512, 8/2 heads); 'trained': "
            f"up to {TRAIN_STEPS} steps on a word chain, prompts of 3-30 chain words; "
            f"'random': weights N(0, {INIT_STD}), prompts of 5-60 tokens; {n} prompts, "
            f"{new} new tokens each "
            f"(greedy, min = max), {threads} torch threads, best of {repeats}; CPU flags: "
            f"{', '.join(native) or 'none of avx512_bf16/amx'}"
        ),
        "figures": figures,
        "notes": notes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    common.print_report(run(args.prompts, args.max_new_tokens, args.threads, args.repeats))


if __name__ == "__main__":
    main()
