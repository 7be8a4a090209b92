"""Settings, read from the environment (`GENQUEUE_*`) at the process edge and passed down.

Nothing reads the environment at import time; each command builds one `Settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from genqueue.errors import GenqueueError

ENV_PREFIX = "GENQUEUE_"

MiB = 1024 * 1024


class SettingsError(GenqueueError):
    """Raised when a GENQUEUE_* variable holds a value that is not allowed."""


@dataclass(frozen=True)
class InputLimits:
    """Bounds on what one submission may hand the scheduler, enforced while it reads, so
    that memory and time stay bounded by these numbers and not by the input. Each
    violation is a problem with its line number (see README, "Input limits")."""

    #: Bytes per JSON line, CSV record or Parquet row; a longer line stops being read
    #: into memory at this size (the rest is skipped in small chunks and counted).
    max_record_bytes: int = 8 * MiB
    #: Nesting depth of objects and arrays inside one record.
    max_nesting_depth: int = 64
    #: Values (objects, arrays, strings, numbers) in one JSON record, and fields in one
    #: CSV record: a line of a million tiny values parses into far more memory than its
    #: bytes, so it is refused before it is parsed.
    max_record_values: int = 1_000_000
    #: Characters per text field of a record (and per message of a conversation).
    max_field_chars: int = 4_000_000
    #: Characters of one rendered prompt (template output, or a conversation's text).
    max_prompt_chars: int = 4_000_000
    #: Bytes of input per job, after gunzip: a compressed input cannot expand without end.
    max_input_bytes: int = 64 * 1024 * MiB
    #: Records per job.
    max_records: int = 50_000_000
    #: Uncompressed bytes of one Parquet row group (pyarrow reads a row group at once).
    max_row_group_bytes: int = 1024 * MiB


_LIMITS = InputLimits()


class Settings(BaseSettings):
    """Every knob with its default; `GENQUEUE_<NAME>` overrides (e.g. GENQUEUE_LEASE_SECONDS)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    database_url: str | None = None
    broker_url: str | None = None
    #: How long a worker's claim on a task lasts without a heartbeat. A killed worker's
    #: task is re-queued this long after its last heartbeat.
    lease_seconds: float = Field(30.0, gt=0)
    #: Attempts per task before it is split to isolate a poison item.
    max_attempts: int = Field(3, ge=1)
    #: How often the reconciler looks for expired leases, lost messages and finished jobs.
    reconcile_interval: float = Field(2.0, gt=0)
    #: A submission that stored no items for this long was abandoned (its submitter
    #: died mid-load): the reconciler removes the half-loaded job and its work.
    submit_stall_seconds: float = Field(600.0, gt=0)
    #: A task not on the broker this long after its job was created is (re)sent.
    dispatch_grace_seconds: float = Field(10.0, ge=0)
    #: Items per task, for every job that does not set its own. Unset (the default):
    #: tasks are sized by work, about `task_tokens` estimated tokens each.
    chunk_size: int | None = Field(None, ge=1, le=100_000)
    #: Estimated tokens (prompt + new tokens) per task when tasks are sized by work.
    task_tokens: int = Field(32768, ge=64)
    #: A micro-batch running longer than this means an item hangs the model: the worker
    #: process exits so the item is retried and, past max_attempts, isolated and failed.
    batch_timeout_seconds: float = Field(600.0, gt=0)
    #: Worker micro-batch limits.
    token_budget: int = Field(16384, ge=16)
    max_batch_size: int = Field(64, ge=1)
    #: A worker process claims and prepares its next task while the model generates the
    #: current one, and commits the previous one's last results meanwhile. Off: one task
    #: at a time (a queued task never waits behind a busy worker's current task).
    prefetch: bool = True
    #: `genqueue run` and `genqueue worker` fork their CPU worker processes (hf and
    #: dry-run engines, Linux) from one that imported torch, transformers and the
    #: model's classes once, instead of each importing them on the same cores; a crashed
    #: process is forked again in a fraction of a second (worker/forkserver.py).
    fork_server: bool = True
    #: Workers send Celery's task events and worker heartbeats, for monitors such as
    #: Flower (README, "Flower"). About 1 ms per task on a worker (a task is a chunk
    #: of items); off for the last bit of throughput when nothing watches.
    task_events: bool = True
    #: Start even when the broker or the database is reached over a network without a
    #: password (see genqueue/security.py): only on a private network you trust.
    allow_insecure: bool = False
    #: Input limits (see InputLimits, and the README's "Input limits").
    max_record_bytes: int = Field(_LIMITS.max_record_bytes, ge=1024)
    max_nesting_depth: int = Field(_LIMITS.max_nesting_depth, ge=2, le=900)
    max_record_values: int = Field(_LIMITS.max_record_values, ge=16)
    max_field_chars: int = Field(_LIMITS.max_field_chars, ge=16)
    max_prompt_chars: int = Field(_LIMITS.max_prompt_chars, ge=16)
    max_input_bytes: int = Field(_LIMITS.max_input_bytes, ge=1024)
    max_records: int = Field(_LIMITS.max_records, ge=1)
    max_row_group_bytes: int = Field(_LIMITS.max_row_group_bytes, ge=1024)

    # -- the HTTP API (`genqueue api` / `genqueue serve`) ----------------------------------
    #: Largest upload accepted (bytes): a larger one is refused with 413 while it streams
    #: in, without being held in memory. OpenAI's limit is 200 MB; the default is 2 GiB.
    api_max_upload_bytes: int = Field(2 << 30, ge=1)
    #: Most lines (requests) one uploaded file may hold (OpenAI's limit is 50,000).
    api_max_file_lines: int = Field(10_000_000, ge=1)
    #: Per tenant: items queued or running at once, over all its jobs (429 past it).
    api_max_queued_items: int = Field(50_000_000, ge=1)
    #: Per tenant: unfinished jobs at once (a batch counts each of its jobs; 429 past it).
    api_max_live_jobs: int = Field(1000, ge=1)
    #: Where uploaded files are kept (default: `files/` in GENQUEUE_HOME).
    files_dir: str | None = None

    # -- metrics and webhooks ------------------------------------------------------------
    #: Serve /metrics without an API key (for a Prometheus on a private network). Off:
    #: /metrics needs an admin key (`Authorization: Bearer <admin key>`).
    metrics_public: bool = False
    #: A webhook request that has not answered within this long failed (it is retried).
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=300)
    #: The first retry's delay; each later one doubles it (with jitter), up to
    #: webhook_backoff_max_seconds.
    webhook_backoff_seconds: float = Field(5.0, gt=0)
    webhook_backoff_max_seconds: float = Field(3600.0, gt=0)
    #: An event not delivered this long after it happened is given up (state `failed`).
    webhook_retry_seconds: float = Field(72 * 3600.0, gt=0)
    #: How often a deliverer looks for events due.
    webhook_poll_seconds: float = Field(1.0, gt=0)

    @classmethod
    def from_env(cls) -> Settings:
        """The environment's settings; a bad value raises SettingsError naming its
        variable and what is allowed."""
        from pydantic import ValidationError

        try:
            return cls()
        except ValidationError as exc:
            problems = [
                f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                + (f" (got {err['input']!r})" if "input" in err else "")
                for err in exc.errors()
            ]
            raise SettingsError("invalid setting: " + "; ".join(problems)) from None

    def input_limits(self) -> InputLimits:
        return InputLimits(**{f.name: getattr(self, f.name) for f in fields(InputLimits)})

    @property
    def heartbeat_seconds(self) -> float:
        return max(0.2, self.lease_seconds / 3)

    def child_env(self) -> dict[str, str]:
        """These settings as the `GENQUEUE_*` environment of a child process (a worker),
        so that it runs with exactly the settings of the process that started it."""
        return {
            ENV_PREFIX + name.upper(): _env_value(value)
            for name, value in self.model_dump().items()
            if value is not None
        }


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
