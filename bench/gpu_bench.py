"""The Python half of gpu_check.sh (run there, on a lent GPU machine, not here).

    python bench/gpu_bench.py build DIR            # random-init ~1B Llama + tokenizer
    python bench/gpu_bench.py prompts DIR N FILE   # N JSONL prompts, 5-200 tokens
    python bench/gpu_bench.py engine NAME DIR      # tokens/s of one engine, batch 64
                                                   # (hf, deepspeed, vllm, hf-continuous)
    python bench/gpu_bench.py e2e NAME RUN_JSON    # tokens/s of a `genqueue run --json`
    python bench/gpu_bench.py table DIR            # the summary table of DIR/*.json

Each step prints one JSON line (and writes it to $GQ_GPU_OUT/<step>.json) so the shell
script can keep going when a step fails.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

BATCH = 64
NEW_TOKENS = 128
LLAMA: dict[str, Any] = {
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 5632,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
}


#: Engine variants the check runs by name: (engine, extra WorkerOptions fields).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "hf-continuous": ("hf", {"hf_batching": "continuous"}),
}


def emit(step: str, data: dict[str, Any]) -> None:
    line = json.dumps({"step": step, **data})
    print(line, flush=True)
    out = os.environ.get("GQ_GPU_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{step}.json").write_text(line + "\n")


def build(target: Path) -> None:
    """A random-init Llama (~1B params, bf16 safetensors) with genqueue's offline
    byte-level BPE tokenizer (its ids all fall inside the 32000-row embedding)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from genqueue.worker.tinymodels import ensure_tiny_model

    t0 = time.perf_counter()
    tiny = ensure_tiny_model("tiny-gpt2", target.parent / "gq-tiny-gpt2-tokenizer")
    tok_cfg = json.loads((tiny / "config.json").read_text())
    eos = int(tok_cfg["eos_token_id"])
    cfg = LlamaConfig(**LLAMA, bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model: Any = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos)
    model.save_pretrained(target, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny / name).exists():
            shutil.copy(tiny / name, target / name)
    params = sum(p.numel() for p in model.parameters())
    emit("build", {"ok": True, "params_m": round(params / 1e6, 1), "s": time.perf_counter() - t0})


def prompts(model_dir: Path, n: int, out: Path) -> None:
    """The same tokenizer as the model's (genqueue's tiny BPE), even if the build failed."""
    import common
    from transformers import AutoTokenizer

    from genqueue.worker.tinymodels import ensure_tiny_model

    tiny = ensure_tiny_model("tiny-gpt2", model_dir.parent / "gq-tiny-gpt2-tokenizer")
    texts = common.make_prompts(n, AutoTokenizer.from_pretrained(tiny))
    common.write_jsonl(out, texts)
    emit("prompts", {"ok": True, "n": n})


def engine(name: str, model_dir: Path) -> None:
    """Load through genqueue's registry; time batched generate of 64 prompts x 128 tokens."""
    import common
    import torch
    from transformers import AutoTokenizer

    from genqueue.params import GenerationParams
    from genqueue.worker.engines import GenRequest, load_engine
    from genqueue.workeropts import WorkerOptions

    step = f"engine-{name}"
    t0 = time.perf_counter()
    engine_name, extra = VARIANTS.get(name, (name, {}))
    try:
        eng = load_engine(
            WorkerOptions(
                model=str(model_dir), engine=engine_name, device="cuda", dtype="bfloat16", **extra
            )
        )
    except BaseException as exc:  # report and let the script continue
        emit(step, {"ok": False, "stage": "load", "error": f"{type(exc).__name__}: {exc}"[:2000]})
        raise
    load_s = time.perf_counter() - t0
    texts = common.make_prompts(BATCH, AutoTokenizer.from_pretrained(model_dir))
    params = GenerationParams(max_new_tokens=NEW_TOKENS)
    reqs = [GenRequest(key=i, prompt=t, params=params) for i, t in enumerate(texts)]
    try:
        eng.generate(reqs[:8])  # warm-up (and any lazy kernel build)
        runs = []
        for _ in range(3):
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            res = eng.generate(reqs)
            torch.cuda.synchronize()
            runs.append((time.perf_counter() - t1, sum(r.completion_tokens for r in res)))
    except BaseException as exc:
        emit(step, {"ok": False, "stage": "generate", "error": f"{type(exc).__name__}: {exc}"})
        raise
    secs, toks = min(runs)
    emit(
        step,
        {
            "ok": True,
            "load_s": round(load_s, 1),
            "batch_s": round(secs, 3),
            "tokens": toks,
            "tokens_per_s": round(toks / secs, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        },
    )


def e2e(name: str, run_json: Path) -> None:
    """Tokens/s of a `genqueue run --json`: its elapsed_s (with start-up) and the job's
    processing time (first claim -> final), tokens counted from its results file."""
    from datetime import datetime

    run = json.loads(run_json.read_text())
    lines = [json.loads(x) for x in Path(run["results"]).read_text().splitlines() if x.strip()]
    ok = [x for x in lines if x["status"] == "succeeded"]
    toks = sum(x["usage"]["completion_tokens"] for x in ok)
    start, end = (datetime.fromisoformat(run[k]) for k in ("started_at", "finished_at"))
    processing = (end - start).total_seconds()
    emit(
        f"e2e-{name}",
        {
            "ok": run["state"] == "completed",
            "items": len(lines),
            "elapsed_s": run["elapsed_s"],
            "processing_s": round(processing, 2),
            "tokens_per_s": round(toks / processing, 1),
            "tokens_per_s_with_startup": round(toks / run["elapsed_s"], 1),
        },
    )


def table(out_dir: Path) -> None:
    print(f"\n{'step':<18} {'ok':<5} {'tokens/s':>10}  details")
    for path in sorted(out_dir.glob("*.json")):
        d = json.loads(path.read_text())
        rest = {k: v for k, v in d.items() if k not in ("step", "ok", "tokens_per_s")}
        print(f"{d['step']:<18} {d['ok']!s:<5} {d.get('tokens_per_s', ''):>10}  {rest}")


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "build":
        build(Path(args[0]))
    elif cmd == "prompts":
        prompts(Path(args[0]), int(args[1]), Path(args[2]))
    elif cmd == "engine":
        engine(args[0], Path(args[1]))
    elif cmd == "e2e":
        e2e(args[0], Path(args[1]))
    elif cmd == "table":
        table(Path(args[0]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
