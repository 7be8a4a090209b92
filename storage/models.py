"""SQLAlchemy models: the single source of truth for jobs, tasks, items, results, attempts.

A *job* is what a user submitted; its *items* are the input records (one each, with the
rendered prompt); *tasks* are chunks of items, the unit a worker leases; a *result* is
the one stored outcome of an item (first writer wins); an *attempt* records each time a
worker claimed a task. Leases are columns of the task (owner, token, expiry).

For the HTTP API: every job and batch belongs to a *tenant*; *api_keys* bind a key
(stored as a hash only) to a tenant; *files* are uploaded inputs kept on disk;
*offered_models* map public model names to a model; *workers* are live worker processes
(each heartbeats its row).

Webhooks: *webhook_endpoints* hold a tenant's default URL and signing secret;
*webhook_events* is the outbox (one row per event, written in the transaction that ends
the job or batch); *webhook_deliveries* records every attempt to deliver one.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JobState(enum.StrEnum):
    """Lifecycle of a job: (submitting →) queued → running → one of the final states.

    `submitting` is internal: the job's input is still being stored. Such a job is never
    finalised and never listed; a large input's first windows may already be at work.
    """

    SUBMITTING = "submitting"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self not in (JobState.SUBMITTING, JobState.QUEUED, JobState.RUNNING)


class TaskState(enum.StrEnum):
    """pending: in SQL, not sent; queued: sent to the broker; running: leased;
    done: every item has a result; split: replaced by two smaller tasks (poison
    isolation); cancelled: will not run."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    SPLIT = "split"
    CANCELLED = "cancelled"


class ResultStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


FINAL_JOB_STATES = tuple(s.value for s in JobState if s.final)
#: Jobs whose work may be dispatched and claimed.
LIVE_JOB_STATES = (JobState.QUEUED.value, JobState.RUNNING.value)
OPEN_TASK_STATES = (TaskState.PENDING.value, TaskState.QUEUED.value, TaskState.RUNNING.value)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def _ts() -> Mapped[datetime | None]:
    return mapped_column(DateTime(timezone=True), nullable=True)


#: The tenant of everything submitted without an API key (the CLI, the Python client).
DEFAULT_TENANT = "default"


def _tenant() -> Mapped[str]:
    return mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)


class Batch(Base):
    """The jobs one input became: one per model (and endpoint) it names."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    input_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    tenant: Mapped[str] = _tenant()
    # -- set for batches created through the OpenAI-compatible API ---------------------
    #: The endpoint every line must use ("/v1/chat/completions" or "/v1/completions").
    endpoint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    completion_window: Mapped[str | None] = mapped_column(String(32), nullable=True)
    input_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    #: "validating" while its input is being submitted, "failed" when it was refused;
    #: None once its jobs exist (their states decide).
    phase: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: Why it failed: [{"code", "message", "line"}, ...].
    errors: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    in_progress_at: Mapped[datetime | None] = _ts()
    failed_at: Mapped[datetime | None] = _ts()
    cancelling_at: Mapped[datetime | None] = _ts()
    #: Where its end is announced (None: the tenant's default endpoint, if any).
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_batches_tenant_created", "tenant", "created_at"),)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(24), default=JobState.QUEUED.value, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(Text)  # resolved reference (hub id or absolute path)
    revision: Mapped[str | None] = mapped_column(String(128), nullable=True)
    engine: Mapped[str | None] = mapped_column(String(32), nullable=True)
    queue: Mapped[str] = mapped_column(String(200))
    template: Mapped[str | None] = mapped_column(Text, nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    chunk_size: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # truncate, etc.
    input_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    total_items: Mapped[int] = mapped_column(Integer, default=0)
    duplicate_executions: Mapped[int] = mapped_column(Integer, default=0)
    #: Items whose result was copied from an identical succeeded item (`--reuse`).
    reused: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()
    deadline_at: Mapped[datetime | None] = _ts()
    #: While submitting: when the submitter last stored a window of items. A submission
    #: silent for long was abandoned (its submitter died) and is removed.
    loaded_at: Mapped[datetime | None] = _ts()
    #: The batch this job is part of (an input that named several models), if any.
    batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    #: A Jinja chat template given with the job (instead of the model's own).
    chat_template: Mapped[str | None] = mapped_column(Text, nullable=True)
    tenant: Mapped[str] = _tenant()
    #: Where its end is announced (None: the tenant's default endpoint, if any).
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_jobs_tenant_created", "tenant", "created_at"),)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default=TaskState.PENDING.value)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    n_items: Mapped[int] = mapped_column(Integer)
    n_succeeded: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    parent_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # split from
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_expires_at: Mapped[datetime | None] = _ts()
    enqueued_at: Mapped[datetime | None] = _ts()
    started_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index("ix_tasks_job_state", "job_id", "state"),
        Index("ix_tasks_state_lease", "state", "lease_expires_at"),
    )


class Item(Base):
    __tablename__ = "items"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0-based input order
    line: Mapped[int] = mapped_column(Integer)  # 1-based line/row in the input
    custom_id: Mapped[str] = mapped_column(String(512))
    task_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    prompt: Mapped[str] = mapped_column(Text)
    # none_as_null: no overrides is SQL NULL, not the JSON text 'null' (nothing to encode
    # on insert or to decode on every claim).
    params: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), nullable=True
    )  # overrides
    #: A chat item's conversation: [{"role", "content"}, ...] (its `prompt` is a plain
    #: text rendering, for planning and display).
    messages: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    # No attempts column: an item's attempts are its task lineage's (see isolate_poison).

    __table_args__ = (
        Index("ix_items_task", "task_id"),
        Index("ix_items_job_custom_id", "job_id", "custom_id"),
    )


class Result(Base):
    __tablename__ = "results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    outputs: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: Why each of several outputs ended (None with one output: see finish_reason).
    finish_reasons: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The generation before post-processing (NULL without post-processing).
    raw_output: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Every raw output, with post-processing and several outputs.
    raw_outputs: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: The first output parsed as JSON (json_schema / json_object).
    parsed: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: A constrained output cut by max_new_tokens before its grammar was complete.
    incomplete: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    #: Per output, OpenAI-shaped log-probabilities ({"content": [...]}).
    logprobs: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: {label: total log-probability} (score_choices).
    choice_scores: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), nullable=True
    )
    task_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: What makes this result reproducible: a digest of the model revision, engine,
    #: params (seed included) and rendered prompt (worker/reuse.py); NULL when it is not
    #: (sampling without a seed). `--reuse` copies a succeeded result with the same key.
    reuse_key: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: The job whose result this one copies (`--reuse`), or NULL when it was generated.
    reused_from: Mapped[str | None] = mapped_column(String(32), nullable=True)

    # The primary key (job_id, idx) is what makes writes idempotent: first writer wins.
    __table_args__ = (Index("ix_results_reuse_key", "reuse_key"),)


class Attempt(Base):
    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    task_id: Mapped[int] = mapped_column(BigInteger, index=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    lease_token: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)  # done/released/...
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    engine: Mapped[str | None] = mapped_column(String(32), nullable=True)
    model_revision: Mapped[str | None] = mapped_column(String(128), nullable=True)
    items_written: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # claimed
    #: When work started (the attempt counted); None: claimed ahead and never started.
    began_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()


class ApiKey(Base):
    """An API key bound to a tenant. Only the key's SHA-256 is stored: the key itself is
    shown once, when it is created."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = _ts()


class StoredFile(Base):
    """An uploaded file: its row here, its bytes on disk at `path`."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    #: Lines (records) in the file, counted while it was received.
    lines: Mapped[int] = mapped_column(BigInteger, default=0)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = _ts()
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)

    __table_args__ = (Index("ix_files_tenant_created", "tenant", "created_at"),)


class OfferedModel(Base):
    """A model the operator offers by a public name (what `body.model` says)."""

    __tablename__ = "offered_models"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    #: The model reference as the operator gave it (hub id, directory, tiny model).
    model: Mapped[str] = mapped_column(Text)
    revision: Mapped[str | None] = mapped_column(String(128), nullable=True)
    engine: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WorkerRow(Base):
    """A live worker process: it writes `seen_at` every heartbeat and removes its row
    when it stops (a killed one's row just goes stale)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queue: Mapped[str] = mapped_column(String(200), index=True)
    model: Mapped[str] = mapped_column(Text)
    engine: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookEndpoint(Base):
    """A tenant's webhook settings: its default URL (optional) and the secret every
    event to the tenant is signed with (`whsec_` + base64 of 32 random bytes)."""

    __tablename__ = "webhook_endpoints"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookEvent(Base):
    """The outbox: an event to deliver (at least once) to `url`. `body` is the exact
    JSON that is signed and sent."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # evt_...
    tenant: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    #: pending (to send), delivered, failed (gave up after the retry window).
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: A deliverer holds the event until then (it is sending it).
    lease_until: Mapped[datetime | None] = _ts()
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    delivered_at: Mapped[datetime | None] = _ts()
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_webhook_events_state_next", "state", "next_attempt_at"),)


class WebhookDelivery(Base):
    """One attempt to deliver an event: when, the HTTP status (None: no answer), the
    error and how long it took."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float)
