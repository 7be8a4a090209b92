"""Built-in tiny models: loadable like real models, deterministic, safe to build in parallel."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from genqueue.protocol import resolve_model_ref
from genqueue.worker import tinymodels
from genqueue.worker.errors import TinyModelError
from genqueue.worker.tinymodels import ensure_tiny_model, is_complete, is_tiny_model_ref


def test_tiny_gpt2_loads_through_auto_classes(tiny_gpt2_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, use_safetensors=True)
    assert not (tiny_gpt2_dir / "pytorch_model.bin").exists()
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert model.config.vocab_size == len(tok) >= 1000
    assert model.config.eos_token_id == tok.eos_token_id
    assert 2_000_000 < model.num_parameters() < 5_000_000
    ids = tok("The library was built", return_tensors="pt")
    assert tok.decode(ids["input_ids"][0]) == "The library was built"  # byte-level round trip
    with torch.inference_mode():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tok))


def test_tiny_t5_loads_through_auto_classes(tiny_t5_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir, use_safetensors=True)
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "</s>", "<unk>")
    assert model.config.is_encoder_decoder
    assert model.config.decoder_start_token_id == tok.pad_token_id
    assert model.generation_config.decoder_start_token_id == tok.pad_token_id
    assert model.config.vocab_size == len(tok)
    ids = tok("translate: good morning")["input_ids"]
    assert ids[-1] == tok.eos_token_id  # encoder input ends with </s>, like real T5
    out = model.generate(**tok(["hello"], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 4) and int(out[0, 0]) == tok.pad_token_id


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-t5"])
def test_build_is_deterministic(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    fixture = {"tiny-gpt2": "tiny_gpt2_dir", "tiny-t5": "tiny_t5_dir"}[name]
    first: Path = request.getfixturevalue(fixture)
    torch.manual_seed(999)  # the global RNG must not matter
    again = ensure_tiny_model(name, tmp_path / name)
    a, b = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (first / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()
    assert (first / "config.json").read_text() == (again / "config.json").read_text()


def test_ensure_returns_existing_model_without_rebuilding(
    tiny_t5_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_args: object) -> None:
        raise AssertionError("rebuilt an existing model")

    monkeypatch.setattr(tinymodels, "_build", fail)
    assert ensure_tiny_model("tiny-t5", tiny_t5_dir) == tiny_t5_dir


def test_losing_a_build_race_uses_the_winners_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "tiny-t5"
    real_build = tinymodels._build

    def build_while_another_process_wins(name: str, out: Path) -> None:
        real_build(name, out)
        real_build(name, target)  # the "other process" finishes first
        (target / "winner").write_text("yes")

    monkeypatch.setattr(tinymodels, "_build", build_while_another_process_wins)
    assert ensure_tiny_model("tiny-t5", target) == target
    assert (target / "winner").exists() and is_complete(target)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-t5"]  # our temp copy is gone


def test_concurrent_builds_yield_one_valid_dir(tmp_path: Path) -> None:
    target = tmp_path / "models" / "tiny-t5"
    barrier = threading.Barrier(4)

    def build() -> Path:
        barrier.wait()  # all four race from the same moment
        return ensure_tiny_model("tiny-t5", target)

    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: build(), range(4)))
    assert paths == [target] * 4
    assert [p.name for p in target.parent.iterdir()] == ["tiny-t5"]  # no temp dirs left
    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForSeq2SeqLM.from_pretrained(target, use_safetensors=True)
    assert model.config.vocab_size == len(tok)


def test_incomplete_existing_dir_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "tiny-gpt2"
    target.mkdir()
    (target / "config.json").write_text("{}")
    with pytest.raises(TinyModelError, match="not a complete tiny-gpt2 model"):
        ensure_tiny_model("tiny-gpt2", target)
    with pytest.raises(TinyModelError, match="unknown tiny model"):
        ensure_tiny_model("tiny-llama", tmp_path / "x")


def test_is_tiny_model_ref(tmp_path: Path) -> None:
    assert is_tiny_model_ref("tiny-gpt2") == "tiny-gpt2"
    assert is_tiny_model_ref(resolve_model_ref("tiny-t5")) == "tiny-t5"
    assert is_tiny_model_ref(str(tmp_path / "tiny-t5")) is None  # same name elsewhere
    assert is_tiny_model_ref("gpt2") is None


@pytest.mark.slow
def test_bench_llama_has_a_real_shape(tmp_path: Path) -> None:
    """bench-llama-25m: a Llama (RoPE, grouped-query attention 8/2) of ~25M parameters,
    built offline, loadable through the Auto classes, with the tiny tokenizer."""
    path = ensure_tiny_model("bench-llama-25m", tmp_path / "bench-llama-25m")
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(path)
    cfg = model.config
    assert cfg.model_type == "llama"
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (8, 512)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (8, 2)
    assert 24_000_000 < model.num_parameters() < 26_000_000
    assert cfg.vocab_size == len(tok) and cfg.eos_token_id == tok.eos_token_id
    ids = tok("The library was built", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
