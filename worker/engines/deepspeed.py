"""The DeepSpeed-inference engine: the HF engine's model wrapped by `init_inference`.

Loading, tokenisation, sampling and post-processing are `HFEngine`'s; only the model is
wrapped. On GPU DeepSpeed injects its fused kernels and can shard the model (tensor
parallelism, one process per GPU started by the `deepspeed` launcher). On CPU it runs
fp32 without kernel injection (its kernels are CUDA-only) and with one rank: there it is
mainly a way to test the integration.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import torch

from genqueue.protocol import context_length
from genqueue.worker.engines.hf import HFEngine, resolve_device
from genqueue.worker.errors import EngineError
from genqueue.workeropts import WorkerOptions

log = logging.getLogger(__name__)


class DeepSpeedEngine(HFEngine):
    """`HFEngine` whose model runs under `deepspeed.init_inference`."""

    engine_name = "deepspeed"
    shards = True

    def __init__(self, options: WorkerOptions) -> None:
        on_gpu = resolve_device(options.device).type == "cuda"
        tensor_parallel = options.tensor_parallel
        if not on_gpu:
            if tensor_parallel != 1:
                raise EngineError(
                    f"tensor_parallel={tensor_parallel} needs GPUs: DeepSpeed tensor "
                    "parallelism is a GPU path (on CPU its shared-memory all-reduce is "
                    "unreliable); use tensor_parallel=1 on CPU"
                )
            if options.dtype not in ("auto", "float32", "fp32"):
                raise EngineError(
                    f"DeepSpeed on CPU runs float32 only (got dtype {options.dtype!r})"
                )
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if tensor_parallel > world:
            raise EngineError(
                f"tensor_parallel={tensor_parallel} needs {tensor_parallel} processes, one per "
                f"GPU (WORLD_SIZE is {world}); start the worker with "
                f"`deepspeed --num_gpus {tensor_parallel} ...`"
            )
        self.tensor_parallel = tensor_parallel
        self.kernel_inject = on_gpu
        super().__init__(options)

    def _wrap_model(self, model: Any) -> Any:
        """Wrap with `init_inference`; generation then runs on the wrapped module."""
        import deepspeed

        if self.kernel_inject or self.tensor_parallel > 1:
            # Kernel injection and TP use torch.distributed; a lone worker process is
            # rank 0 of a world of 1 on a private port (several workers may share a host).
            _single_process_dist_env()
            if not torch.distributed.is_initialized():
                deepspeed.init_distributed(dist_backend="nccl")
        kwargs: dict[str, Any] = {}
        max_context = context_length(model.config.to_dict())
        if max_context is not None:
            kwargs["max_out_tokens"] = max_context  # the KV cache injected kernels allocate
        else:
            log.info("the model declares no context length; DeepSpeed sizes its cache itself")
        self.ds_engine = deepspeed.init_inference(
            model,
            dtype=model.dtype,
            replace_with_kernel_inject=self.kernel_inject,
            tensor_parallel={"tp_size": self.tensor_parallel},
            **kwargs,
        )
        return self.ds_engine.module

    def _model_generate(self, **kwargs: Any) -> torch.Tensor:
        """With injected kernels go through DeepSpeed's generate, which resets its KV
        cache per call (and rejects beam search, which its kernels do not support);
        without them the plain module's generate is the same model."""
        if self.kernel_inject:
            return self.ds_engine.generate(**kwargs)
        return super()._model_generate(**kwargs)

    def close(self) -> None:
        """Drop the DeepSpeed engine with the model."""
        self.ds_engine = None
        super().close()


def _single_process_dist_env() -> None:
    """Default the torch.distributed env to a single local rank unless a launcher set it."""
    if "RANK" in os.environ and "MASTER_PORT" in os.environ:
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))  # the OS picks a free port: no clash between workers
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
