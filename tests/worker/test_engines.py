"""Engines on real tiny models: batch invariance, decoding params, seeded sampling, loading."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from genqueue.params import GenerationParams
from genqueue.protocol import resolve_model_ref
from genqueue.worker.engines import EngineError, GenRequest, OutOfMemory, load_engine
from genqueue.worker.engines.hf import HFEngine
from genqueue.workeropts import WorkerOptions

# Mixed lengths (1 to ~40 tokens) so batches really are padded.
PROMPTS = [
    "The library",
    "Computers follow instructions exactly, which is both their strength and their weakness.",
    "A",
    "In the mountains the weather changes quickly; a clear afternoon can turn into a storm "
    "within an hour, with wind, rain and sometimes snow.",
    "Questions and answers: What is the capital of France?",
]


def reqs(prompts: list[str], params: GenerationParams, seeds: list[int] | None = None) -> list[Any]:
    seeds_ = seeds or [None] * len(prompts)  # type: ignore[list-item]
    return [
        GenRequest(i, p, params, seed=s)
        for i, (p, s) in enumerate(zip(prompts, seeds_, strict=True))
    ]


@functools.cache
def plain_causal(model_dir: Path) -> tuple[Any, Any]:
    """Tokenizer and model loaded straight with transformers (the reference)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok, AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()


def reference_causal(model_dir: Path, prompt: str, **gen: Any) -> list[list[int]]:
    """New tokens of plain `model.generate` on one prompt, straight from transformers."""
    tok, model = plain_causal(model_dir)
    ids = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, pad_token_id=tok.eos_token_id, **gen)
    return [row[ids["input_ids"].shape[1] :] for row in out.tolist()]


def test_info_records_provenance(gpt2: HFEngine, t5: HFEngine, tiny_gpt2_dir: Path) -> None:
    assert gpt2.info.engine == "hf" and not gpt2.info.is_encoder_decoder
    assert gpt2.info.max_context == 512
    assert (gpt2.info.device, gpt2.info.dtype) == ("cpu", "float32")
    assert gpt2.info.model_ref == str(tiny_gpt2_dir)
    assert gpt2.info.revision is not None and gpt2.info.revision.startswith("local-")
    assert t5.info.is_encoder_decoder and t5.info.max_context is None  # relative attention
    assert t5.info.revision != gpt2.info.revision


def test_causal_batched_greedy_equals_alone_and_plain_generate(
    gpt2: HFEngine, tiny_gpt2_dir: Path
) -> None:
    params = GenerationParams(max_new_tokens=10)
    batched = gpt2.generate(reqs(PROMPTS, params))
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    for i, prompt in enumerate(PROMPTS):
        alone = gpt2.generate(reqs([prompt], params))[0]
        [ref] = reference_causal(tiny_gpt2_dir, prompt, max_new_tokens=10, do_sample=False)
        expected = tok.decode(ref, skip_special_tokens=True)
        assert batched[i].key == i
        assert batched[i].outputs == alone.outputs == [expected]
        assert batched[i].prompt_tokens == alone.prompt_tokens == len(tok(prompt)["input_ids"])
        assert batched[i].completion_tokens == 10
        assert batched[i].finish_reasons == ["length"]
    assert len({r.outputs[0] for r in batched}) > 1  # not one degenerate string for all


def test_seq2seq_batched_greedy_equals_alone_and_plain_generate(
    t5: HFEngine, tiny_t5_dir: Path
) -> None:
    params = GenerationParams(max_new_tokens=8)
    batched = t5.generate(reqs(PROMPTS, params))
    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir, use_safetensors=True).eval()
    for i, prompt in enumerate(PROMPTS):
        alone = t5.generate(reqs([prompt], params))[0]
        with torch.inference_mode():
            out = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=8)
        expected = tok.decode(out[0], skip_special_tokens=True)
        assert batched[i].outputs == alone.outputs == [expected]
        assert batched[i].prompt_tokens == len(tok(prompt)["input_ids"])  # with </s>


def test_stop_string_cuts_output_and_counts_tokens(gpt2: HFEngine, tiny_gpt2_dir: Path) -> None:
    prompt = PROMPTS[1]
    full = gpt2.generate(reqs([prompt], GenerationParams(max_new_tokens=16)))[0].outputs[0]
    stop = pick_stop(full)
    params = GenerationParams(max_new_tokens=16, stop=(stop, "never-generated-string"))
    res = gpt2.generate(reqs(PROMPTS[:2], params))[1]
    assert res.outputs == [full[: full.find(stop)]]
    assert res.finish_reasons == ["stop"]
    [tokens] = reference_causal(tiny_gpt2_dir, prompt, max_new_tokens=16, do_sample=False)
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    needed = next(m for m in range(1, 17) if stop in tok.decode(tokens[:m]))
    assert res.completion_tokens == needed < 16


def pick_stop(text: str) -> str:
    """A 3-character stop string whose first occurrence is inside `text`, not at its start."""
    return next(text[j : j + 3] for j in range(1, len(text) - 3) if text.find(text[j : j + 3]) > 0)


@pytest.mark.parametrize("engine", ["gpt2", "t5"])
def test_beam_search_with_stop_strings(engine: str, request: pytest.FixtureRequest) -> None:
    """Beam search asks the stopping criteria about 2 x num_beams fresh candidates per
    item each step: stop strings and per-item limits still apply to every item of a
    micro-batch, and no output keeps its stop string."""
    eng: HFEngine = request.getfixturevalue(engine)
    base = GenerationParams(max_new_tokens=12, num_beams=3, num_return_sequences=2)
    full = eng.generate(reqs(PROMPTS[:3], base))
    stop = pick_stop(full[1].outputs[0])
    params = base.model_copy(update={"stop": (stop,)})
    res = eng.generate(reqs(PROMPTS[:3], params))
    assert all(r.error is None and len(r.outputs) == 2 for r in res)
    for r in res:
        assert all(stop not in out for out in r.outputs), (stop, r.outputs)
    # Items of one call with different output limits: each ends at its own.
    short = [
        GenRequest(key=i, prompt=p, params=base.model_copy(update={"max_new_tokens": 4 + 4 * i}))
        for i, p in enumerate(PROMPTS[:3])
    ]
    for r in eng.generate(short):
        assert r.completion_tokens <= 2 * (4 + 4 * r.key)


def test_seq2seq_stop_string(t5: HFEngine) -> None:
    full = t5.generate(reqs([PROMPTS[1]], GenerationParams(max_new_tokens=16)))[0].outputs[0]
    stop = pick_stop(full)
    res = t5.generate(reqs(PROMPTS[:3], GenerationParams(max_new_tokens=16, stop=(stop,))))
    assert res[1].outputs == [full[: full.find(stop)]]
    assert res[1].finish_reasons == ["stop"] and res[1].completion_tokens < 16


def test_eos_finishes_with_stop(gpt2: HFEngine, tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    prompt = PROMPTS[3]
    [tokens] = reference_causal(tiny_gpt2_dir, prompt, max_new_tokens=12, do_sample=False)
    fake_eos = tokens[4]
    end = tokens.index(fake_eos)
    # Same weights, but generation_config also treats `fake_eos` as end of sequence.
    model_dir = tmp_path / "eos-model"
    shutil.copytree(tiny_gpt2_dir, model_dir)
    cfg = json.loads((model_dir / "generation_config.json").read_text())
    cfg["eos_token_id"] = [cfg["eos_token_id"], fake_eos]
    (model_dir / "generation_config.json").write_text(json.dumps(cfg))
    engine = load_engine(WorkerOptions(model=str(model_dir), engine="hf"))
    res = engine.generate(reqs([PROMPTS[0], prompt], GenerationParams(max_new_tokens=12)))[1]
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    assert res.outputs == [tok.decode(tokens[:end])]
    assert res.finish_reasons == ["stop"]
    assert res.completion_tokens == end + 1  # the EOS token counts
    assert engine.info.revision == gpt2.info.revision  # weights and config.json unchanged


def test_beam_search_return_sequences_match_plain_generate(
    gpt2: HFEngine, tiny_gpt2_dir: Path
) -> None:
    params = GenerationParams(max_new_tokens=6, num_beams=3, num_return_sequences=2)
    batched = gpt2.generate(reqs(PROMPTS[:3], params))
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    for i, prompt in enumerate(PROMPTS[:3]):
        ref = reference_causal(
            tiny_gpt2_dir, prompt, max_new_tokens=6, num_beams=3, num_return_sequences=2
        )
        assert batched[i].outputs == [tok.decode(r, skip_special_tokens=True) for r in ref]
        assert len(batched[i].finish_reasons) == 2
        assert batched[i].completion_tokens == 12


def test_seeded_sampling_is_independent_of_batch(gpt2: HFEngine) -> None:
    params = GenerationParams(
        max_new_tokens=12, do_sample=True, temperature=0.9, top_k=200, top_p=0.95
    )
    target = PROMPTS[1]
    alone = gpt2.generate([GenRequest(7, target, params, seed=42)])[0].outputs
    small = gpt2.generate(
        [GenRequest(0, PROMPTS[2], params, seed=1), GenRequest(7, target, params, seed=42)]
    )[1].outputs
    others = [GenRequest(i, p, params, seed=100 + i) for i, p in enumerate(PROMPTS[3:] * 2)]
    big = gpt2.generate([*others[:2], GenRequest(7, target, params, seed=42), *others[2:]])
    assert alone == small == big[2].outputs
    different = gpt2.generate([GenRequest(7, target, params, seed=43)])[0].outputs
    assert different != alone
    # Without a seed every call draws a fresh one.
    unseeded = [gpt2.generate([GenRequest(7, target, params)])[0].outputs[0] for _ in range(2)]
    assert unseeded[0] != unseeded[1]


def test_sampled_return_sequences_use_derived_seeds(gpt2: HFEngine) -> None:
    one = GenerationParams(max_new_tokens=10, do_sample=True)
    three = GenerationParams(max_new_tokens=10, do_sample=True, num_return_sequences=3)
    res = gpt2.generate([GenRequest(0, PROMPTS[0], three, seed=5)])[0]
    assert len(res.outputs) == 3 and len(set(res.outputs)) == 3
    assert res.completion_tokens == 30
    batched = gpt2.generate(
        [GenRequest(1, PROMPTS[3], three, seed=6), GenRequest(0, PROMPTS[0], three, seed=5)]
    )[1]
    assert batched.outputs == res.outputs
    # Sequence 0 depends only on (seed, 0): the same whatever num_return_sequences is.
    assert gpt2.generate([GenRequest(0, PROMPTS[0], one, seed=5)])[0].outputs == res.outputs[:1]


def test_seq2seq_seeded_sampling_is_independent_of_batch(t5: HFEngine) -> None:
    params = GenerationParams(max_new_tokens=8, do_sample=True)
    alone = t5.generate([GenRequest(0, PROMPTS[0], params, seed=3)])[0].outputs
    batched = t5.generate(reqs(PROMPTS, params, seeds=[3, 4, 5, 6, 7]))[0].outputs
    assert alone == batched


def test_beam_sampling_is_seeded_per_item(gpt2: HFEngine) -> None:
    params = GenerationParams(max_new_tokens=8, do_sample=True, num_beams=2, num_return_sequences=2)
    alone = gpt2.generate([GenRequest(0, PROMPTS[0], params, seed=11)])[0].outputs
    batched = gpt2.generate(reqs(PROMPTS[:3], params, seeds=[11, 12, 13]))
    assert batched[0].outputs == alone and len(alone) == 2
    assert [r.key for r in batched] == [0, 1, 2]


@pytest.mark.parametrize(
    "controls", [{"no_repeat_ngram_size": 2}, {"repetition_penalty": 1.8}], ids=str
)
def test_repetition_controls_match_plain_generate(
    gpt2: HFEngine, tiny_gpt2_dir: Path, controls: dict[str, Any]
) -> None:
    plain = gpt2.generate(reqs(PROMPTS, GenerationParams(max_new_tokens=12)))
    controlled = gpt2.generate(reqs(PROMPTS, GenerationParams(max_new_tokens=12, **controls)))
    assert [r.outputs for r in plain] != [r.outputs for r in controlled]
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    for prompt, res in zip(PROMPTS, controlled, strict=True):
        [ref] = reference_causal(tiny_gpt2_dir, prompt, max_new_tokens=12, **controls)
        assert res.outputs == [tok.decode(ref, skip_special_tokens=True)]


def test_count_tokens_and_truncate(gpt2: HFEngine, t5: HFEngine) -> None:
    text = PROMPTS[3]
    n = gpt2.count_tokens([text])[0]
    assert gpt2.count_tokens([text, "A"]) == [n, 1]
    tail = gpt2.truncate(text, 10)
    assert text.endswith(tail) and 0 < gpt2.count_tokens([tail])[0] <= 10
    assert gpt2.truncate(text, n) == text
    head = t5.truncate(text, 10)  # seq2seq keeps the start (task prefixes come first)
    assert text.startswith(head) and 0 < t5.count_tokens([head])[0] <= 10


def test_host_memory_limit_raises_out_of_memory(tiny_gpt2_dir: Path) -> None:
    engine = load_engine(
        WorkerOptions(model=str(tiny_gpt2_dir), engine="hf", host_memory_limit_mb=1)
    )
    small = engine.generate(reqs(["A"], GenerationParams(max_new_tokens=4)))
    assert small[0].completion_tokens == 4
    # 2 * 3 layers * 256 * 16 rows * (~40 + 64) tokens * 4 bytes ~ 10 MiB > 1 MiB
    with pytest.raises(OutOfMemory, match="host memory limit"):
        engine.generate(reqs(PROMPTS * 2, GenerationParams(max_new_tokens=64, num_beams=2)))


def test_empty_prompt_is_rejected_for_decoder_only(gpt2: HFEngine) -> None:
    with pytest.raises(ValueError, match="empty prompt"):
        gpt2.generate(reqs(["", "A"], GenerationParams(max_new_tokens=2)))


def test_deepspeed_on_cpu_matches_hf(gpt2: HFEngine, tiny_gpt2_dir: Path) -> None:
    pytest.importorskip("deepspeed")
    ds = load_engine(WorkerOptions(model=str(tiny_gpt2_dir), engine="deepspeed"))
    assert (ds.info.engine, ds.info.dtype, ds.info.device) == ("deepspeed", "float32", "cpu")
    params = GenerationParams(max_new_tokens=10)
    assert [r.outputs for r in ds.generate(reqs(PROMPTS, params))] == [
        r.outputs for r in gpt2.generate(reqs(PROMPTS, params))
    ]
    with pytest.raises(EngineError, match="GPU"):
        load_engine(WorkerOptions(model=str(tiny_gpt2_dir), engine="deepspeed", tensor_parallel=2))
    ds.close()


def test_dry_run_echoes_the_prompt() -> None:
    engine = load_engine(WorkerOptions(model="anything", engine="dry-run"))
    assert engine.info.engine == "dry-run"
    prompt = "Translate:  one two\nthree four five"
    short, cut, stopped = engine.generate(
        [
            GenRequest(0, prompt, GenerationParams(max_new_tokens=10)),
            GenRequest(1, prompt, GenerationParams(max_new_tokens=3)),
            GenRequest(2, prompt, GenerationParams(stop=("three",))),
        ]
    )
    assert short.outputs == [prompt] and short.finish_reasons == ["stop"]
    assert short.prompt_tokens == 6 and short.completion_tokens == 6
    assert cut.outputs == ["Translate:  one two"] and cut.finish_reasons == ["length"]
    assert stopped.outputs == ["Translate:  one two\n"] and stopped.finish_reasons == ["stop"]
    assert engine.count_tokens([prompt]) == [6] and engine.truncate(prompt, 2) == "four five"


def test_loader_errors(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    with pytest.raises(EngineError, match="unknown engine 'mlx'; available: hf, deepspeed"):
        load_engine(WorkerOptions(model=str(tiny_gpt2_dir), engine="mlx"))
    with pytest.raises(EngineError, match=r"model directory .*nope does not exist"):
        load_engine(WorkerOptions(model=str(tmp_path / "nope"), engine="hf"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_gpt2_dir / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded, ever")
    with pytest.raises(EngineError, match=r"no safetensors weights in .*pytorch_model.bin"):
        load_engine(WorkerOptions(model=str(pickled), engine="hf"))
    custom = tmp_path / "custom"
    shutil.copytree(tiny_gpt2_dir, custom)
    cfg = json.loads((custom / "config.json").read_text())
    cfg.update(model_type="genqueue-custom", auto_map={"AutoConfig": "configuration_x.XConfig"})
    (custom / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EngineError, match="trust_remote_code"):
        load_engine(WorkerOptions(model=str(custom), engine="hf"))
    with pytest.raises(EngineError, match="tensor parallelism needs engine 'deepspeed'"):
        load_engine(WorkerOptions(model=str(tiny_gpt2_dir), engine="hf", tensor_parallel=2))
    with pytest.raises(EngineError, match="unknown dtype"):
        load_engine(WorkerOptions(model=str(tiny_gpt2_dir), engine="hf", dtype="float8"))


def test_loader_builds_builtin_tiny_model_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENQUEUE_HOME", str(tmp_path))  # a fresh cache, not the session's
    model_dir = Path(resolve_model_ref("tiny-t5"))
    assert model_dir == tmp_path / "models" / "tiny-t5" and not model_dir.exists()
    engine = load_engine(WorkerOptions(model=str(model_dir), engine="hf"))
    assert (model_dir / "model.safetensors").is_file()
    assert engine.info.model_ref == str(model_dir) and engine.info.is_encoder_decoder
    res = engine.generate(reqs(["hello"], GenerationParams(max_new_tokens=3)))
    assert res[0].completion_tokens == 3


def test_importing_engines_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import genqueue.worker.engines as e, genqueue.worker.batching\n"
        "from genqueue.params import GenerationParams\n"
        "from genqueue.workeropts import WorkerOptions\n"
        "eng = e.load_engine(WorkerOptions(model='m', engine='dry-run'))\n"
        "eng.generate([e.GenRequest(0, 'hi there', GenerationParams())])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_rows_with_their_own_lengths_share_one_call(gpt2: HFEngine) -> None:
    """Items that differ only in max_new_tokens and stop strings run in one generate
    call, each row ending at its own limit: the same outputs, finish reasons and token
    counts as each item alone (greedy)."""
    full = gpt2.generate(reqs([PROMPTS[1]], GenerationParams(max_new_tokens=24)))[0].outputs[0]
    stop = pick_stop(full)
    params = [
        GenerationParams(max_new_tokens=3),
        GenerationParams(max_new_tokens=24, stop=(stop,)),
        GenerationParams(max_new_tokens=11),
        GenerationParams(max_new_tokens=24),
        GenerationParams(max_new_tokens=7, stop=("never-generated-string",)),
    ]
    batch = [GenRequest(i, p, params[i]) for i, p in enumerate(PROMPTS)]
    calls: list[int] = []
    real = gpt2._model_generate

    def counting(**kwargs: Any) -> Any:
        calls.append(int(kwargs["input_ids"].shape[0]))
        return real(**kwargs)

    gpt2._model_generate = counting  # type: ignore[method-assign]
    try:
        together = gpt2.generate(batch)
    finally:
        del gpt2._model_generate
    assert calls == [5]
    for req, res in zip(batch, together, strict=True):
        [alone] = gpt2.generate([req])
        assert (res.outputs, res.finish_reasons) == (alone.outputs, alone.finish_reasons)
        assert res.completion_tokens == alone.completion_tokens
    assert together[1].finish_reasons == ["stop"] and together[1].outputs == [
        full[: full.find(stop)]
    ]
    assert [r.completion_tokens for r in together][::2] == [3, 11, 7]


@pytest.mark.slow
def test_continuous_batching_equals_static_batching(gpt2: HFEngine, tiny_gpt2_dir: Path) -> None:
    """`--hf-batching continuous` (transformers' generate_batch) gives greedy items the
    same outputs, finish reasons and token counts as static batching, per-row limits and
    stop strings included; sampled items still run static."""
    full = gpt2.generate(reqs([PROMPTS[1]], GenerationParams(max_new_tokens=20)))[0].outputs[0]
    stop = pick_stop(full)
    limits = [(4, ()), (20, (stop,)), (9, ()), (20, ()), (6, ("never-generated-string",))]
    batch = [
        GenRequest(i, p, GenerationParams(max_new_tokens=m, stop=s))
        for i, (p, (m, s)) in enumerate(zip(PROMPTS, limits, strict=True))
    ]
    engine = load_engine(
        WorkerOptions(model=str(tiny_gpt2_dir), engine="hf", hf_batching="continuous")
    )
    assert isinstance(engine, HFEngine)
    calls: list[str] = []
    real_batch = engine.model.generate_batch

    def counting(**kwargs: Any) -> Any:
        calls.append("continuous")
        return real_batch(**kwargs)

    engine.model.generate_batch = counting
    try:
        continuous = engine.generate(batch)
        assert calls == ["continuous"]
        static = gpt2.generate(batch)
        for c, s in zip(continuous, static, strict=True):
            assert (c.outputs, c.finish_reasons) == (s.outputs, s.finish_reasons)
            assert (c.completion_tokens, c.prompt_tokens) == (s.completion_tokens, s.prompt_tokens)
        assert continuous[1].finish_reasons == ["stop"]
        sampled = GenerationParams(max_new_tokens=4, do_sample=True)
        engine.generate([GenRequest(0, PROMPTS[0], sampled, seed=1)])
        assert calls == ["continuous"]  # sampling needs per-row generators: static
    finally:
        engine.close()
