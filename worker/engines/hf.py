"""The transformers engine: one model loaded with `from_pretrained`, batched `generate`.

Loading is deliberately strict (safetensors only, remote code off unless trusted) because
a worker loads whatever a job names. Generation is batch-invariant: decoder-only prompts
are left-padded (so greedy output is the same alone or in any batch) and sampling draws
from per-item generators (`genqueue.worker.sampling`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from genqueue.params import LENGTH_FIELDS, GenerationParams
from genqueue.protocol import context_length, resolve_model_ref
from genqueue.worker.engines import check_model_ref
from genqueue.worker.engines.base import GenRequest, GenResult, ModelInfo, OutOfMemory
from genqueue.worker.engines.constrained import GrammarCache, GrammarMask, OpenAIPenalties
from genqueue.worker.engines.precision import check_precision, quantize_int8
from genqueue.worker.engines.prompts import PromptCodec, PromptMethods
from genqueue.worker.engines.scoring import label_scores, token_logprobs
from genqueue.worker.errors import EngineError
from genqueue.worker.provenance import local_revision
from genqueue.worker.sampling import SeededSampler, row_seeds, seed_or_random
from genqueue.workeropts import WorkerOptions


class HFEngine(PromptMethods):
    """A causal or seq2seq transformers model; subclasses may wrap the loaded model
    (`_wrap_model`) and the generate call (`_model_generate`), e.g. for DeepSpeed."""

    engine_name = "hf"
    #: Whether one engine spans several GPUs (`tensor_parallel` > 1).
    shards = False
    #: Params that may differ between the rows of one call: each row ends at its own
    #: max_new_tokens and stop strings (so variable output lengths share a batch).
    per_row_params: tuple[str, ...] = tuple(LENGTH_FIELDS)

    def __init__(self, options: WorkerOptions) -> None:
        if options.tensor_parallel != 1 and not self.shards:
            raise EngineError(
                f"the {self.engine_name} engine runs one model replica per process; tensor "
                "parallelism needs engine 'deepspeed'"
            )
        self.options = options
        model_ref = check_model_ref(options.model)
        self.device = resolve_device(options.device)
        torch_dtype = resolve_dtype(options.dtype, self.device)
        precision = check_precision(options, self.engine_name, self.device, torch_dtype)
        self.host_memory_limit_mb = options.host_memory_limit_mb
        trust = options.trust_remote_code
        common: dict[str, Any] = {"revision": options.revision, "trust_remote_code": trust}
        try:
            config = AutoConfig.from_pretrained(model_ref, **common)
            model_cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
            # Safetensors only: pickled weights (.bin) can run code when loaded.
            model: Any = model_cls.from_pretrained(
                model_ref, config=config, dtype=torch_dtype, use_safetensors=True, **common
            )
            self.tokenizer = AutoTokenizer.from_pretrained(model_ref, **common)
        except Exception as exc:  # damaged weights, unknown architectures: all the user's to fix
            raise _load_error(model_ref, exc, trust) from exc
        self.config = config
        self.is_encoder_decoder = bool(config.is_encoder_decoder)
        if not self.is_encoder_decoder:
            # Left padding keeps every prompt's last token at the end, where generation
            # continues; with the attention mask (and position ids derived from it) a
            # row's output does not depend on how much padding its neighbours force.
            self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.prompts = PromptCodec(self.tokenizer, encoder_decoder=self.is_encoder_decoder)
        model = model.to(self.device).eval()
        if options.quantize == "int8":
            model = quantize_int8(model, model_ref)
        self.model = self._wrap_model(model)
        gen_eos = model.generation_config.eos_token_id
        eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        self.eos_ids = {t for t in [*eos, self.tokenizer.eos_token_id] if t is not None}
        vocab = max(len(self.tokenizer), int(getattr(config, "vocab_size", 0) or 0))
        #: Compiled grammars, once per grammar text (so once per job and params).
        self.grammars = GrammarCache(self.tokenizer, vocab_size=vocab, eos_ids=self.eos_ids)
        if Path(model_ref).is_dir():
            loaded_revision: str | None = local_revision(Path(model_ref))
        else:
            loaded_revision = getattr(config, "_commit_hash", None) or options.revision
        self.info = ModelInfo(
            model_ref=model_ref,
            revision=loaded_revision,
            # The precision is part of what ran (it changes outputs): "hf", "hf+int8", ...
            engine=self.engine_name
            if precision == "float32"
            else f"{self.engine_name}+{precision}",
            is_encoder_decoder=self.is_encoder_decoder,
            max_context=context_length(config.to_dict()),
            device=str(self.device),
            dtype=str(torch_dtype).removeprefix("torch."),
        )

    # -- hooks for subclasses ------------------------------------------------------------
    def _wrap_model(self, model: Any) -> Any:
        """The model generate runs on; the identity here."""
        return model

    def _model_generate(self, **kwargs: Any) -> torch.Tensor:
        """Run `generate` (a hook so wrappers can route it)."""
        return self.model.generate(**kwargs)

    # -- Engine protocol -------------------------------------------------------------------
    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Generate for requests sharing params (except seeds) in one `generate` call.
        Beam search with sampling runs item by item (see `_generate_batch`)."""
        if not requests:
            return []
        per_row = frozenset(self.per_row_params)
        key = requests[0].params.batch_key(per_row)
        if any(r.params.batch_key(per_row) != key for r in requests):
            raise ValueError("HFEngine.generate needs requests with equal params")
        params = requests[0].params
        with _oom_guard(self.device):
            if params.num_beams > 1:
                # Beams reorder rows: each item runs alone, or with items of equal limits.
                if params.do_sample:
                    return [self._generate_batch([r])[0] for r in requests]
                same: dict[tuple[Any, ...], list[GenRequest]] = {}
                for r in requests:
                    same.setdefault(r.params.batch_key(), []).append(r)
                done = {
                    res.key: res for group in same.values() for res in self._generate_batch(group)
                }
                return [done[r.key] for r in requests]
            return self._generate_batch(requests)

    def close(self) -> None:
        """Drop the model and give cached GPU memory back."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- internals ---------------------------------------------------------------------------
    def _continuous(self, requests: Sequence[GenRequest]) -> bool:
        """Whether these requests run through continuous batching (`--hf-batching
        continuous`): greedy, one sequence, decoder-only, nothing that needs logits
        processors or per-step outputs (those run static)."""
        p = requests[0].params
        return (
            self.options.hf_batching == "continuous"
            and self.engine_name == "hf"
            and not self.is_encoder_decoder
            and not p.do_sample
            and p.num_beams == 1
            and p.num_return_sequences == 1
            and p.min_new_tokens == 0
            and p.repetition_penalty == 1.0
            and not p.no_repeat_ngram_size
            and not (p.presence_penalty or p.frequency_penalty)
            and not p.logprobs
            and all(r.params.grammar() is None and not r.params.score_choices for r in requests)
        )

    def _generate_continuous(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """transformers' `generate_batch`: requests are scheduled into a paged KV cache
        and a finished one frees its slot for the next. Each row runs to the largest
        limit or its EOS, then is cut to its own limit and stop strings (`_finish`)."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        ids = [r.token_ids for r in requests]
        encoded = self.tokenize(requests) if any(i is None for i in ids) else ids
        prompts = [list(i) for i in encoded]
        if min(len(p) for p in prompts) == 0:
            raise ValueError("empty prompt: a decoder-only model needs at least one prompt token")
        max_new = max(r.params.max_new_tokens for r in requests)
        config = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        cb: dict[str, Any] = {}
        if self.device.type != "cuda":
            # Sized to this call: the default sizes the cache from free accelerator memory.
            page = 256
            need = sum(-(-(len(p) + max_new) // page) for p in prompts)
            cb = {"num_blocks": need + 2, "max_batch_tokens": 512, "use_cuda_graph": False}
        with torch.inference_mode():
            out = self.model.generate_batch(
                inputs=prompts,
                generation_config=config,
                continuous_batching_config=ContinuousBatchingConfig(**cb),
                warmup=self.device.type == "cuda",
            )
        # Request ids are req_<index> in input order.
        rows = [list(out[f"req_{i}"].generated_tokens) for i in range(len(prompts))]
        results = []
        for req, prompt, row in zip(requests, prompts, rows, strict=True):
            text, reason, used, _ = self._finish(row[: req.params.max_new_tokens], req.params)
            results.append(
                GenResult(
                    key=req.key,
                    outputs=[text],
                    finish_reasons=[reason],
                    completion_tokens=used,
                    prompt_tokens=len(prompt),
                    incomplete=[False],
                )
            )
        return results

    def _generate_batch(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Tokenise with padding, run one `generate`, and post-process each row."""
        if self._continuous(requests):
            return self._generate_continuous(requests)
        params = requests[0].params
        k = params.num_return_sequences
        ids = [r.token_ids for r in requests]
        encoded = self.tokenize(requests) if any(i is None for i in ids) else ids
        enc = self.tokenizer.pad({"input_ids": [list(i) for i in encoded]}, return_tensors="pt")
        enc = enc.to(self.device)
        input_len = int(enc["input_ids"].shape[1])
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        if not self.is_encoder_decoder and min(prompt_lens) == 0:
            raise ValueError("empty prompt: a decoder-only model needs at least one prompt token")
        limits = [r.params.max_new_tokens for r in requests]
        stops = [r.params.stop for r in requests]
        # The call runs to the largest limit; each row stops at its own (_RowLimits).
        params = params.model_copy(update={"max_new_tokens": max(limits)})
        self._check_host_memory(len(requests) * params.num_beams * k, input_len, params)
        seeds = [seed_or_random(r.seed) for r in requests]
        kwargs = self._generate_kwargs(params, seeds)
        start = 1 if self.is_encoder_decoder else input_len  # after decoder_start / prompt
        if any(stops) or min(limits) != max(limits):
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [
                    _RowLimits(
                        self.tokenizer,
                        stops,
                        limits,
                        start,
                        params.min_new_tokens,
                        beams=params.num_beams > 1,
                    )
                ]
            )
        # Per-row grammars (rows r*k + j are item r's): items with different
        # constraints, or none, share this call.
        grammars = [r.params.grammar() for r in requests]
        processors: list[Any] = []
        if params.presence_penalty or params.frequency_penalty:
            processors.append(
                OpenAIPenalties(
                    start, presence=params.presence_penalty, frequency=params.frequency_penalty
                )
            )
        if any(g is not None for g in grammars):
            matchers = [
                self.grammars.matcher(g) if g is not None else None
                for g in grammars
                for _ in range(k)
            ]
            processors.append(GrammarMask(matchers, self.eos_ids))
        # The sampler (when sampling) stays last: it draws from the masked scores.
        kwargs["logits_processor"] = LogitsProcessorList(
            processors + list(kwargs.get("logits_processor", []))
        )
        if params.logprobs:
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        model_inputs = dict(enc)
        rng: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if params.do_sample and params.num_beams == 1 and k > 1:
            # transformers refuses num_return_sequences > 1 without sampling or beams, and
            # our sampler runs under do_sample=False: expand the rows ourselves, in the
            # order generate would (row r*k + j is sequence j of item r).
            model_inputs = {n: t.repeat_interleave(k, dim=0) for n, t in enc.items()}
        if params.do_sample and params.num_beams > 1:
            # Beam sampling cannot use per-row generators (beams reorder rows), so these
            # items run alone under a seeded global RNG: still reproducible per item.
            rng = _seeded_global_rng(seeds[0], self.device)
        with torch.inference_mode(), rng:
            out: Any = self._model_generate(**model_inputs, **kwargs)
        step_logits = None
        if params.logprobs:
            step_logits, out = out.logits, out.sequences
        new_tokens = out[:, start:].tolist()
        results = []
        for i, req in enumerate(requests):
            res = GenResult(key=req.key, prompt_tokens=int(prompt_lens[i]))
            if step_logits is not None:
                res.logprobs = []
            for j in range(k):
                row = new_tokens[i * k + j][: req.params.max_new_tokens]
                text, reason, used, content = self._finish(row, req.params)
                res.outputs.append(text)
                res.finish_reasons.append(reason)
                res.completion_tokens += used
                grammar = grammars[i]
                res.incomplete.append(
                    grammar is not None and not self.grammars.accepts(grammar, row[:content])
                )
                if res.logprobs is not None and step_logits is not None:
                    res.logprobs.append(
                        self._logprobs(step_logits, i * k + j, row[:content], params.top_logprobs)
                    )
            results.append(res)
        scored = [(i, r) for i, r in enumerate(requests) if r.params.score_choices]
        if scored:
            scores = label_scores(
                self.model,
                prompts=[encoded[i] for i, _ in scored],
                labels=[r.params.choices for _, r in scored],
                encode=lambda label: list(
                    self.tokenizer(label, add_special_tokens=False)["input_ids"]
                ),
                eos_id=int(self.tokenizer.eos_token_id),
                pad_id=int(self.tokenizer.pad_token_id),
                encoder_decoder=self.is_encoder_decoder,
                decoder_start=getattr(self.config, "decoder_start_token_id", None),
                device=self.device,
            )
            for (i, r), value in zip(scored, scores, strict=True):
                results[i].choice_scores = value
                self._label_by_scores(results[i], r.params, value)
        return results

    def _label_by_scores(self, res: GenResult, params: GenerationParams, scores: Any) -> None:
        """Greedy with label scores: the output is the label of the highest score (the
        first such label on a tie). Constrained greedy decoding picks one token at a
        time and may spell a label in pieces the tokenizer never would, ending on a label
        that is not the likeliest one. Sampled, beam and log-probability outputs stay as
        decoded (their tokens are what the logprobs describe), as does a label longer
        than max_new_tokens."""
        if params.do_sample or params.num_beams > 1 or params.logprobs or not scores:
            return
        best = max(params.choices, key=lambda label: scores[label])
        used = len(self.tokenizer(best, add_special_tokens=False)["input_ids"])
        if used > params.max_new_tokens:
            return
        used += used < params.max_new_tokens  # the end-of-sequence token, with room for it
        n = len(res.outputs)
        res.outputs = [best] * n
        res.finish_reasons = ["stop"] * n
        res.incomplete = [False] * n
        res.completion_tokens = used * n

    def _logprobs(self, step_logits: Any, row: int, ids: list[int], top: int) -> dict[str, Any]:
        """One output's log-probabilities in OpenAI's shape."""

        def entry(token: int, logprob: float) -> dict[str, Any]:
            raw = self.grammars.token_bytes(token)
            return {
                "token": raw.decode("utf-8", errors="replace"),
                "logprob": logprob,
                "bytes": list(raw),
            }

        content = []
        for token, logprob, alts in token_logprobs(step_logits, row, ids, top):
            item = entry(token, logprob)
            item["top_logprobs"] = [entry(t, lp) for t, lp in alts]
            content.append(item)
        return {"content": content}

    def _generate_kwargs(self, params: GenerationParams, seeds: list[int]) -> dict[str, Any]:
        """Every GenerationParams field passed explicitly, so a model's own
        generation_config (e.g. a default repetition_penalty) cannot change them."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "min_new_tokens": params.min_new_tokens,
            "num_beams": params.num_beams,
            "num_return_sequences": params.num_return_sequences,
            "repetition_penalty": params.repetition_penalty,
            "no_repeat_ngram_size": params.no_repeat_ngram_size,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self.eos_ids),
            "do_sample": False,
        }
        if params.num_beams > 1:
            kwargs.update(
                length_penalty=params.length_penalty, early_stopping=params.early_stopping
            )
        if params.do_sample and params.num_beams > 1:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            kwargs["top_k"] = params.top_k
            if params.min_p:
                kwargs["min_p"] = params.min_p
            if params.typical_p < 1.0:
                kwargs["typical_p"] = params.typical_p
        elif params.do_sample:
            kwargs["num_return_sequences"] = 1  # rows already expanded in _generate_batch
            sampler = SeededSampler(
                row_seeds(seeds, params.num_return_sequences),
                temperature=params.temperature,
                top_k=params.top_k,
                top_p=params.top_p,
                min_p=params.min_p,
                typical_p=params.typical_p,
            )
            kwargs["logits_processor"] = LogitsProcessorList([sampler])
        return kwargs

    def _finish(self, new_ids: list[int], params: GenerationParams) -> tuple[str, str, int, int]:
        """(text, finish reason, completion tokens, content tokens) of one generated row.
        The text ends before the first EOS or stop string; completion tokens count what
        the model produced for it (the EOS or the token completing the stop string
        included); content tokens are those the text was decoded from."""
        end, reason = len(new_ids), "length"
        for i, tok in enumerate(new_ids):
            if tok in self.eos_ids:
                end, reason = i, "stop"
                break
        ids = new_ids[:end]
        used = end + (1 if reason == "stop" else 0)
        text = self._decode(ids)
        if params.stop:
            skip = len(self._decode(ids[: params.min_new_tokens])) if params.min_new_tokens else 0
            hits = [pos for s in params.stop if (pos := text.find(s, skip)) >= 0]
            if hits:
                cut = min(hits)
                # Fewest tokens whose text contains a stop string (monotone: binary search).
                lo, hi = 1, len(ids)
                while lo < hi:
                    mid = (lo + hi) // 2
                    part = self._decode(ids[:mid])
                    if any(part.find(s, skip) >= 0 for s in params.stop):
                        hi = mid
                    else:
                        lo = mid + 1
                return text[:cut], "stop", lo, lo
        return text, reason, used, end

    def _decode(self, ids: list[int]) -> str:
        """Text of token ids, special tokens (EOS, padding) dropped."""
        return str(
            self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    def _check_host_memory(self, rows: int, prompt_len: int, params: GenerationParams) -> None:
        """Refuse a batch whose KV cache alone would exceed the host memory budget, before
        the allocator (or the OOM killer) finds out the hard way."""
        if self.host_memory_limit_mb is None:
            return
        cfg = self.config
        layers = getattr(cfg, "num_decoder_layers", None) or cfg.num_hidden_layers
        heads = cfg.num_attention_heads
        head_dim = (
            getattr(cfg, "head_dim", None) or getattr(cfg, "d_kv", None) or cfg.hidden_size // heads
        )
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        dtype_bytes = torch.finfo(next(self.model.parameters()).dtype).bits // 8
        need = (
            2 * layers * head_dim * kv_heads * rows * (prompt_len + params.max_new_tokens)
        ) * dtype_bytes
        if need > self.host_memory_limit_mb * 2**20:
            raise OutOfMemory(
                f"batch of {rows} rows x {prompt_len + params.max_new_tokens} tokens needs "
                f"~{need / 2**20:.0f} MiB of KV cache; host memory limit is "
                f"{self.host_memory_limit_mb} MiB"
            )


def prefork(options: WorkerOptions) -> None:
    """Import what loading `options.model` will import, and build nothing.

    transformers imports a model's classes and what they need (torch.distributed.tensor,
    sympy, its losses, the tokenizer's module) on the first `from_pretrained`: about 3 s
    of CPU. A fork server (worker/forkserver.py) calls this before it forks workers, so
    they pay it once; it must leave no thread, tensor or connection behind. Code shipped
    with the model is not imported here (it runs in the workers, as without a server)."""
    import transformers.generation.utils
    import transformers.modeling_utils  # noqa: F401
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING,
    )
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    if options.trust_remote_code:
        return
    config = AutoConfig.from_pretrained(
        resolve_model_ref(options.model), revision=options.revision, local_files_only=True
    )
    mapping = (
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING
        if config.is_encoder_decoder
        else MODEL_FOR_CAUSAL_LM_MAPPING
    )
    with contextlib.suppress(KeyError):
        mapping[type(config)]  # imports the model's module
    with contextlib.suppress(KeyError):
        TOKENIZER_MAPPING[type(config)]  # and its tokenizer's


class _RowLimits(StoppingCriteria):
    """Ends each row at its item's output limit, or once the text it generated (after
    `min_new` tokens) contains one of its item's stop strings. Only generated text is
    searched, never the prompt.

    Rows r*n .. r*n + n-1 are item r's. Greedy and sampled rows keep their place from
    step to step, so a finished row is remembered and not decoded again. Beam search
    (`beams`) asks about a fresh set of candidate rows each step (2 x num_beams per item
    in transformers 5), so each is judged on its own tokens."""

    def __init__(
        self,
        tokenizer: Any,
        stops: Sequence[Sequence[str]],
        limits: Sequence[int],
        start: int,
        min_new: int,
        *,
        beams: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.stops = [tuple(s) for s in stops]  # per item
        self.limits = list(limits)
        self.start = start
        self.min_new = min_new
        self.beams = beams
        # Every token decodes to at least one byte; a few extra cover multi-byte chars.
        self.tail = [max((len(x.encode()) for x in s), default=0) + 4 for s in self.stops]
        self.done: list[bool] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kw: Any) -> Any:
        rows = input_ids.shape[0]
        per_item = max(1, rows // len(self.stops))
        if self.done is None or self.beams or len(self.done) != rows:
            self.done = [False] * rows
        done = self.done
        produced = input_ids.shape[1] - self.start
        check = []
        for row in range(rows):
            if done[row]:
                continue
            item = min(row // per_item, len(self.stops) - 1)
            if produced >= self.limits[item]:
                done[row] = True
            elif self.stops[item] and produced > self.min_new:
                check.append((row, item))
        if check:
            ids = [
                input_ids[
                    row, max(self.start + self.min_new, input_ids.shape[1] - self.tail[item]) :
                ].tolist()
                for row, item in check
            ]
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            for (row, item), text in zip(check, texts, strict=True):
                if any(s in text for s in self.stops[item]):
                    done[row] = True
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@contextlib.contextmanager
def _oom_guard(device: torch.device) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into `OutOfMemory` after freeing the cache, so the
    batching layer can halve the batch and retry."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise OutOfMemory(str(exc).splitlines()[0] if str(exc) else "out of memory") from exc


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG for one call and restore it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _load_error(model_ref: str, exc: Exception, trust_remote_code: bool) -> EngineError:
    """A loading failure rephrased as what the user can do about it."""
    msg = str(exc)
    if "trust_remote_code" in msg and not trust_remote_code:
        return EngineError(
            f"model {model_ref} needs custom code from its repository; genqueue does not run "
            "it unless you trust it (pass trust_remote_code=True / --trust-remote-code)"
        )
    if type(exc).__name__ == "SafetensorError":
        return EngineError(
            f"the safetensors weights of {model_ref} cannot be read ({msg}): the file is "
            "damaged or incomplete; save or download the model again"
        )
    if "safetensors" in msg.lower():
        return EngineError(
            f"no safetensors weights for {model_ref}; genqueue loads safetensors only "
            "(convert with `model.save_pretrained(dir, safe_serialization=True)`)"
        )
    return EngineError(f"could not load model {model_ref}: {msg}")


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str) -> torch.device:
    """ "auto" is the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise EngineError(f"invalid device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} requested but no CUDA GPU is available")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """ "auto" is bf16 on GPUs that support it, else fp16 on GPU, and fp32 on CPU (half
    precision matmuls on CPU are slow and not what users expect)."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise EngineError(
            f"unknown dtype {dtype!r}; use auto or one of {', '.join(_DTYPES)}"
        ) from None
