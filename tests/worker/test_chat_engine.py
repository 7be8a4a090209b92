"""Conversations on a real tiny model: rendered with the model's chat template (or the
job's), tokenised once, and generated from exactly as transformers would."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from genqueue.params import GenerationParams
from genqueue.worker.batching import BatchPolicy, generate_all
from genqueue.worker.engines.base import GenRequest
from genqueue.worker.engines.hf import HFEngine

CONVERSATIONS = [
    ({"role": "user", "content": "Hello there"},),
    (
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Germany? Explain at length, please."},
    ),
    (
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Two"},
        {"role": "user", "content": "Three"},
    ),
]


def chat(key: int, messages: tuple[dict[str, str], ...], **kw: object) -> GenRequest:
    params = GenerationParams(max_new_tokens=8)
    return GenRequest(key, "", params, messages=messages, **kw)  # type: ignore[arg-type]


def test_rendering_is_the_models_chat_template_token_for_token(
    gpt2: HFEngine, tiny_gpt2_dir: Path
) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    ids = gpt2.tokenize([chat(i, c) for i, c in enumerate(CONVERSATIONS)])
    for got, conversation in zip(ids, CONVERSATIONS, strict=True):
        expected = tok.apply_chat_template(
            list(conversation), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert got == list(expected)


def test_chat_outputs_equal_plain_generate_on_the_rendered_ids(
    gpt2: HFEngine, tiny_gpt2_dir: Path
) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, use_safetensors=True).eval()
    requests = [chat(i, c) for i, c in enumerate(CONVERSATIONS)]
    batched = [r for batch in generate_all(gpt2, requests, BatchPolicy()) for r in batch]
    by_key = {r.key: r for r in batched}
    for i, conversation in enumerate(CONVERSATIONS):
        ids = tok.apply_chat_template(
            list(conversation), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(
                **ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id
            )
        expected = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert by_key[i].outputs == [expected]
        assert by_key[i].prompt_tokens == ids["input_ids"].shape[1]


def test_a_jobs_own_template_replaces_the_models(gpt2: HFEngine) -> None:
    own = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    [ids] = gpt2.tokenize([chat(0, CONVERSATIONS[2], chat_template=own)])
    assert gpt2.tokenizer.decode(ids) == "[One][Two][Three]"


def test_a_model_without_a_template_fails_the_item_with_a_code(gpt2: HFEngine) -> None:
    saved = gpt2.tokenizer.chat_template
    gpt2.tokenizer.chat_template = None
    try:
        plain = GenRequest(1, "plain prompt", GenerationParams(max_new_tokens=2))
        batches = list(generate_all(gpt2, [chat(0, CONVERSATIONS[0]), plain], BatchPolicy()))
    finally:
        gpt2.tokenizer.chat_template = saved
    results = {r.key: r for batch in batches for r in batch}
    assert results[0].error is not None and results[0].error.code == "no_chat_template"
    assert results[1].error is None and results[1].completion_tokens == 2


def test_truncating_a_conversation_drops_its_oldest_turns(gpt2: HFEngine) -> None:
    long = (
        {"role": "system", "content": "Rules."},
        *({"role": "user", "content": "word " * 60} for _ in range(10)),
        {"role": "user", "content": "the last question"},
    )
    full = len(gpt2.tokenize([chat(0, long)])[0])
    cut = gpt2.fit(chat(0, long), full // 3)
    assert cut.messages is not None and cut.messages[0]["content"] == "Rules."
    assert cut.messages[-1]["content"] == "the last question"
    assert len(gpt2.tokenize([cut])[0]) <= full // 3 < full
