"""CPU speed options of the transformers engine: bfloat16 where the CPU computes it
natively, and dynamic int8 quantisation of linear layers (`--quantize int8`).

Both are opt-in, because both change outputs a little (bench/cpu_options.py measures
how much, as the share of greedy tokens identical to float32). Where they cannot run
well they are refused with the reason, instead of running slowly or not at all:

- bfloat16 on a CPU without AVX512-BF16 or AMX is emulated by widening to float32, so
  it is slower than float32 itself: refused there.
- int8 uses torch's dynamic quantisation (`torch.ao.quantization.quantize_dynamic`):
  weights are stored as int8 (a scale per output channel), activations quantised on the
  fly per batch. Its kernels
  (fbgemm / x86 / onednn) are CPU kernels, and it quantises float32 weights, so it needs
  the hf engine, on CPU, in float32. DeepSpeed replaces the model's modules itself.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path
from typing import Any

import torch

from genqueue.worker.errors import EngineError
from genqueue.workeropts import WorkerOptions

QUANTIZE_CHOICES = ("none", "int8")
#: CPU flags (as /proc/cpuinfo names them) that compute bfloat16 matmuls natively.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags, or None where the OS does not say (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bfloat16 natively (None: unknown)."""
    flags = cpu_flags()
    if flags is None:
        return None
    return any(f in flags for f in BF16_FLAGS)


def check_precision(
    options: WorkerOptions, engine_name: str, device: torch.device, dtype: torch.dtype
) -> str:
    """Refuse combinations that cannot run (or would run slower than the default), and
    return the precision label recorded with the engine: float32, bfloat16, float16 or
    int8."""
    quantize = options.quantize.lower()
    if quantize not in QUANTIZE_CHOICES:
        raise EngineError(
            f"unknown quantize {options.quantize!r}; use {' or '.join(QUANTIZE_CHOICES)}"
        )
    if quantize == "int8":
        if engine_name != "hf":
            raise EngineError(
                f"--quantize int8 works with the hf engine only (not {engine_name!r}): "
                "DeepSpeed replaces the model's layers with its own"
            )
        if device.type != "cpu":
            raise EngineError(
                "--quantize int8 runs on CPU only (torch's dynamic quantisation has CPU "
                f"kernels), not on {device}; on GPU use --dtype float16 or bfloat16"
            )
        if dtype != torch.float32:
            raise EngineError(
                "--quantize int8 quantises float32 weights; use --dtype float32 (or auto) "
                f"with it, not {options.dtype!r}"
            )
        engines = torch.backends.quantized.supported_engines
        if not any(e in engines for e in ("x86", "fbgemm", "onednn", "qnnpack")):
            raise EngineError(
                "--quantize int8: this torch build has no quantized CPU kernels "
                f"(supported engines: {engines})"
            )
        return "int8"
    if device.type == "cpu" and dtype == torch.bfloat16 and cpu_has_native_bf16() is False:
        raise EngineError(
            "--dtype bfloat16 on this CPU would be emulated (it has neither AVX512-BF16 "
            "nor AMX), which is slower than float32; use --dtype float32 (or "
            "--quantize int8 for a faster CPU model)"
        )
    return str(dtype).removeprefix("torch.")


def quantize_int8(model: Any, model_ref: str) -> Any:
    """The model with its `torch.nn.Linear` layers replaced by dynamically quantised
    int8 ones. Refuses a model that has none (GPT-2's blocks are Conv1D layers, so only
    its output layer would change)."""
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if len(linear) < 2:
        raise EngineError(
            f"--quantize int8 quantises torch.nn.Linear layers, and model {model_ref} has "
            f"{len(linear)} (its layers are of another kind, e.g. GPT-2's Conv1D); serve "
            "it without --quantize"
        )
    with warnings.catch_warnings():
        # torch 2.13 marks torch.ao.quantization as deprecated in favour of torchao
        # (a large extra dependency); the eager dynamic path still works and is tested.
        warnings.simplefilter("ignore")
        with contextlib.suppress(AttributeError):
            engines = torch.backends.quantized.supported_engines
            if "x86" in engines:
                torch.backends.quantized.engine = "x86"
        # Per-channel weight scales: closer to float32 than one scale per tensor (78 % vs
        # 76 % of next tokens equal on bench/cpu_options.py's trained model), same speed.
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        return torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear: qconfig}, dtype=torch.qint8, inplace=True
        )
