"""Label scores and token log-probabilities for the torch engines.

`label_scores` teacher-forces every label after its item's prompt, many (item, label)
rows per forward pass: a label's score is the sum of the model's log-probabilities of
its tokens and of the end-of-sequence token after them, i.e. log P(the output is
exactly this label | prompt). Rows are right-padded, so padding never comes before a
scored token and positions need no adjusting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

#: (item index, label) rows per forward pass when scoring labels.
SCORE_ROWS = 64


def label_scores(
    model: Any,
    *,
    prompts: Sequence[Sequence[int]],
    labels: Sequence[Sequence[str]],
    encode: Callable[[str], list[int]],
    eos_id: int,
    pad_id: int,
    encoder_decoder: bool,
    decoder_start: int | None,
    device: torch.device,
) -> list[dict[str, float]]:
    """For each prompt, every one of its labels' total log-probability."""
    rows: list[tuple[int, str, list[int]]] = []
    for i, names in enumerate(labels):
        for name in names:
            rows.append((i, name, [*encode(name), eos_id]))
    out: list[dict[str, float]] = [{} for _ in prompts]
    for start in range(0, len(rows), SCORE_ROWS):
        part = rows[start : start + SCORE_ROWS]
        if encoder_decoder:
            sums = _score_seq2seq(
                model,
                [prompts[i] for i, _, _ in part],
                [t for _, _, t in part],
                pad_id=pad_id,
                decoder_start=decoder_start or pad_id,
                device=device,
            )
        else:
            sums = _score_causal(
                model,
                [prompts[i] for i, _, _ in part],
                [t for _, _, t in part],
                pad_id=pad_id,
                device=device,
            )
        for (i, name, _), value in zip(part, sums, strict=True):
            out[i][name] = value
    return out


def _score_causal(
    model: Any,
    prompts: Sequence[Sequence[int]],
    targets: Sequence[list[int]],
    *,
    pad_id: int,
    device: torch.device,
) -> list[float]:
    seqs = [list(p) + t for p, t in zip(prompts, targets, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        attn[r, : len(s)] = 1
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for r, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        pos = torch.arange(len(p) - 1, len(p) - 1 + len(t), device=logp.device)
        tok = torch.tensor(t, device=logp.device)
        out.append(float(logp[r, pos, tok].sum()))
    return out


def _score_seq2seq(
    model: Any,
    prompts: Sequence[Sequence[int]],
    targets: Sequence[list[int]],
    *,
    pad_id: int,
    decoder_start: int,
    device: torch.device,
) -> list[float]:
    enc_w = max(len(p) for p in prompts)
    dec = [[decoder_start, *t[:-1]] for t in targets]
    dec_w = max(len(d) for d in dec)
    ids = torch.full((len(prompts), enc_w), pad_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), enc_w), dtype=torch.long)
    dids = torch.full((len(prompts), dec_w), pad_id, dtype=torch.long)
    dattn = torch.zeros((len(prompts), dec_w), dtype=torch.long)
    for r, (p, d) in enumerate(zip(prompts, dec, strict=True)):
        ids[r, : len(p)] = torch.tensor(list(p))
        attn[r, : len(p)] = 1
        dids[r, : len(d)] = torch.tensor(d)
        dattn[r, : len(d)] = 1
    with torch.inference_mode():
        logits = model(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            decoder_input_ids=dids.to(device),
            decoder_attention_mask=dattn.to(device),
        ).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for r, t in enumerate(targets):
        pos = torch.arange(0, len(t), device=logp.device)
        tok = torch.tensor(t, device=logp.device)
        out.append(float(logp[r, pos, tok].sum()))
    return out


def token_logprobs(
    step_logits: Sequence[torch.Tensor], row: int, ids: Sequence[int], top: int
) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """(token, log-probability, top alternatives) of each of `ids`, from the raw
    logits `generate` returned per step (before temperature, penalties or masks)."""
    out = []
    for step, tok in enumerate(ids):
        logp = torch.log_softmax(step_logits[step][row].float(), dim=-1)
        alts: list[tuple[int, float]] = []
        if top:
            values, indices = torch.topk(logp, top)
            alts = [
                (int(i), float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)
            ]
        out.append((int(tok), float(logp[tok]), alts))
    return out
