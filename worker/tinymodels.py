"""Built-in tiny models (random weights, offline BPE tokenizer), built on first use.

They let `genqueue run --model tiny-gpt2` and the test suite work without a hub or
downloads. They are saved with `save_pretrained` and loaded through the Auto classes, so
they exercise exactly the code path real models take. Their text is gibberish.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from genqueue.protocol import TINY_MODELS, cache_dir
from genqueue.worker.errors import TinyModelError

#: Seed of the random weights; fixed so every machine builds the same model.
TINY_SEED = 1234
#: Target size of the BPE vocabulary (the corpus below yields about this many merges).
TINY_VOCAB = 1024
#: Files that make a built directory complete (the model and its tokenizer).
_REQUIRED = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)
#: A simple chat template (plain-text role markers, no new tokens), so chat jobs run on
#: the tiny models for real: `<|user|>` and the message, one turn after the other.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# A small built-in English corpus; enough merges for a ~1k-token byte-level BPE.
_CORPUS = """\
The morning train left the station a few minutes late, and the passengers settled into
their seats with newspapers, coffee and the quiet patience of people who travel every day.
Outside the window the fields were still grey with frost, and a line of birds crossed the
sky toward the river. Nobody spoke much; the conductor walked slowly through the carriage,
checking tickets and nodding to the regulars he had known for years.

A small bakery on the corner opens before dawn. The baker mixes flour, water, salt and a
little yeast, folds the dough, and leaves it to rise while the ovens heat. By six o'clock
the first loaves are cooling on wooden racks, and the smell of bread drifts down the street
where delivery vans wait with their engines running.

Computers follow instructions exactly, which is both their strength and their weakness. A
program that works for a thousand inputs may fail on the next one, because the author
never imagined that case. Good engineers write tests, read error messages carefully, and
change one thing at a time, so that when something breaks they know why it broke.

In the mountains the weather changes quickly. A clear afternoon can turn into a storm within
an hour, with wind, rain and sometimes snow even in summer. Experienced hikers carry a map,
a warm jacket, water and food, and they turn back early rather than late, because the
mountain will still be there next week.

The library was built more than a hundred years ago, with tall windows, long tables and
shelves that reach the ceiling. Students come to study in silence, old men read the daily
papers, and children sit on the floor of the reading room with picture books about animals,
ships, planets and the history of the world.

Language models predict the next word from the words that came before. Given a prompt, they
generate text one token at a time, choosing each token from a probability distribution.
Greedy decoding always picks the most likely token; sampling draws from the distribution,
and a temperature, a top-k limit or a nucleus threshold shapes how adventurous it is.

Gardening teaches patience. Seeds planted in spring need light, water and good soil, and they
grow at their own pace whatever the gardener wishes. Some plants fail, insects eat others, and
a late frost can ruin a month of work; but in autumn there are tomatoes, beans, apples and
pumpkins, and the work of the year seems worth it.

The city council met on Tuesday evening to discuss the new bridge, the budget for schools,
the repair of several roads and a proposal to plant trees along the harbour. After a long
debate the members voted to approve the plan, and the mayor promised that construction would
begin before the end of the year, weather permitting.

Questions and answers: What is the capital of France? Paris. How many days are in a week?
Seven. Which planet is closest to the sun? Mercury. Translate to German: good morning, thank
you, please. Summarize the following paragraph in one sentence. Write a short poem about
the sea, the wind, the light and the long summer evenings by the water.
"""


def is_tiny_model_ref(model_ref: str) -> str | None:
    """The built-in tiny model's name if `model_ref` is one (its bare name or the cache
    directory `resolve_model_ref` maps it to), else None."""
    if model_ref in TINY_MODELS:
        return model_ref
    path = Path(model_ref)
    if path.name in TINY_MODELS and path.parent == cache_dir() / "models":
        return path.name
    return None


def is_complete(path: Path) -> bool:
    """Whether `path` holds a fully written model (weights, config and tokenizer)."""
    return all((path / name).is_file() for name in _REQUIRED)


def ensure_tiny_model(name: str, path: Path) -> Path:
    """Build the tiny model `name` into `path` unless it is already there; returns `path`.

    Safe when several processes race: each builds into a private temp dir beside the
    target and renames it into place atomically; a loser discards its copy and uses the
    winner's (the builds are identical, since they are deterministic).
    """
    if name not in TINY_MODELS:
        raise TinyModelError(f"unknown tiny model {name!r}; built-in: {', '.join(TINY_MODELS)}")
    path = Path(path)
    if is_complete(path):
        return path
    if all((path / n).is_file() for n in _REQUIRED if n != "chat_template.jinja"):
        # Built by a version without chat templates: add it (same weights, same revision).
        tmp = path / f".chat_template.jinja.{os.getpid()}"
        tmp.write_text(CHAT_TEMPLATE)
        os.replace(tmp, path / "chat_template.jinja")
        return path
    if path.exists() and any(path.iterdir()):
        raise TinyModelError(
            f"{path} exists but is not a complete {name} model; delete it and genqueue will "
            "rebuild it"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    try:
        _build(name, tmp)
        try:
            # rename() replaces an empty directory but fails on a non-empty one: exactly
            # the "first complete build wins" rule we want.
            os.rename(tmp, path)
        except OSError:
            if not is_complete(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _train_tokenizer(special: list[str]) -> Any:
    """A byte-level BPE trained on the built-in corpus (deterministic, milliseconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer)
    return tok


def _randomize(model: Any, std: float) -> None:
    """Overwrite every matrix with N(0, std) from a private generator: deterministic, and
    unaffected by (and not affecting) the global torch RNG other threads may use."""
    import torch

    gen = torch.Generator().manual_seed(TINY_SEED)
    with torch.no_grad():
        for _name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


#: The benchmark models' architectures: real shapes, random weights, the tiny tokenizer.
_BENCH_SHAPES: dict[str, dict[str, Any]] = {
    # ~25M parameters: 8 layers, hidden 512, grouped-query attention (8 query heads, 2
    # key/value heads), RoPE, SwiGLU; the tokenizer's own vocabulary, so the text it
    # decodes (and stop strings) behave as with a real model.
    "bench-llama-25m": {
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "intermediate_size": 1536,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
    },
    # GPT-2 small (124M): 12 layers, hidden 768, 12 heads, GPT-2's 50257-token
    # vocabulary (ids past the tiny tokenizer's 1024 decode to nothing).
    "bench-gpt2-124m": {
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "n_positions": 1024,
        "vocab_size": 50257,
    },
}


def _bench_model(name: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, generation config) of a bench-* model."""
    from transformers import (
        GenerationConfig,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    eos = "<|endoftext|>"
    tok = _train_tokenizer([eos])
    eos_id = tok.token_to_id(eos)
    max_len = 2048 if name == "bench-llama-25m" else 1024
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos, model_max_length=max_len
    )
    shape = _BENCH_SHAPES[name]
    ids = {"bos_token_id": eos_id, "eos_token_id": eos_id}
    model: Any
    if name == "bench-llama-25m":
        config = LlamaConfig(vocab_size=tok.get_vocab_size(), **shape, **ids)
        model = LlamaForCausalLM(config)
    else:
        model = GPT2LMHeadModel(GPT2Config(**shape, **ids))
    return model, tokenizer, GenerationConfig(**ids)


def _build(name: str, out: Path) -> None:
    """Write model, tokenizer and generation config of `name` into `out`."""
    from tokenizers import processors
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    model: Any
    tokenizer: Any
    gen_config: Any
    if name in _BENCH_SHAPES:
        model, tokenizer, gen_config = _bench_model(name)
    elif name == "tiny-gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        eos = "<|endoftext|>"
        tok = _train_tokenizer([eos])
        eos_id = tok.token_to_id(eos)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos, model_max_length=512
        )
        config: Any = GPT2Config(
            vocab_size=tok.get_vocab_size(),
            n_positions=512,
            n_embd=256,
            n_layer=3,
            n_head=4,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
        )
        model = GPT2LMHeadModel(config)
        # No pad token on purpose, like real GPT-2: the engine pads with EOS.
        gen_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id)
    else:
        from transformers import T5Config, T5ForConditionalGeneration

        tok = _train_tokenizer(["<pad>", "</s>", "<unk>"])
        pad_id, eos_id = tok.token_to_id("<pad>"), tok.token_to_id("</s>")
        # Like T5's own tokenizer, encoder inputs end with </s>.
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
        )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token="<pad>",
            eos_token="</s>",
            unk_token="<unk>",
            model_max_length=512,
        )
        t5_args: dict[str, Any] = {"decoder_start_token_id": pad_id}  # an extra field
        config = T5Config(
            vocab_size=tok.get_vocab_size(),
            d_model=128,
            d_kv=32,
            d_ff=512,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            **t5_args,
        )
        model = T5ForConditionalGeneration(config)
        gen_config = GenerationConfig(
            pad_token_id=pad_id, eos_token_id=eos_id, decoder_start_token_id=pad_id
        )
    _randomize(model, std=0.05 if name == "tiny-t5" else 0.02)
    model.generation_config = gen_config
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
