"""Errors the worker raises on purpose: one sub-root under `GenqueueError`.

Per-item problems (a prompt too long, an item that fails to generate) are *not*
exceptions: they become `ItemError`s on that item's result. These classes are for
failures of the worker itself (a model that cannot be loaded).
"""

from __future__ import annotations

from genqueue.errors import GenqueueError

#: A worker process's exit status when its model cannot be loaded (an EngineError): a
#: condition to fix, not a crash, so `genqueue run` stops at once and says why.
EXIT_ENGINE_ERROR = 3


class WorkerError(GenqueueError):
    """Raised when a worker cannot do its job (the root of the worker's errors)."""


class EngineError(WorkerError):
    """Raised when a model engine cannot be created: unknown engine name, a missing model
    directory, weights not in safetensors format, remote code not trusted, or an
    unsupported device/parallelism combination. The message says what to do."""


class TinyModelError(WorkerError):
    """Raised when a built-in tiny model cannot be built or its directory is unusable."""
