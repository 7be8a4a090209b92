"""Submitting: stream the input, validate it, store it as one job (or, for OpenAI batch
lines that name models, as a batch of one job per model and endpoint), then dispatch.

Items are read as a stream and written in windows (loader.py), so memory stays flat for
any input size. A job is visible to workers only once every item is stored and the
input is clean; a rejected input leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from genqueue.params import GenerationParams
from genqueue.protocol import queue_for
from genqueue.scheduler.dispatch import Dispatcher
from genqueue.scheduler.errors import IdempotencyConflict, SpecError
from genqueue.scheduler.inputs import ParsedItem, open_items
from genqueue.scheduler.kinds import JobInputSpec
from genqueue.scheduler.loader import Loader, Loading
from genqueue.scheduler.modelcheck import check_model
from genqueue.scheduler.openai_format import ENDPOINTS
from genqueue.scheduler.planning import Sizing
from genqueue.scheduler.promptfit import PromptFit
from genqueue.scheduler.readers.checks import value_problem
from genqueue.settings import InputLimits
from genqueue.storage import batches, dispatch, lifecycle, loading
from genqueue.storage.db import Store, utcnow
from genqueue.storage.models import DEFAULT_TENANT, Batch, Job
from genqueue.storage.status import view_job

#: A job's metadata, as JSON, is at most this long (it is stored and shown with the job).
MAX_METADATA_BYTES = 64 << 10

log = logging.getLogger(__name__)

#: Jobs one input may become (one per model and endpoint its OpenAI lines name).
MAX_JOBS_PER_BATCH = 64


@dataclass(frozen=True)
class Offered:
    """A model offered by public name: what a name in a submission stands for."""

    model: str
    revision: str | None = None


@dataclass(frozen=True)
class JobSpec:
    """Everything about a job except its input."""

    kind: str = "generate"
    #: The model. OpenAI batch lines name their own (`body.model`); this overrides them.
    model: str | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    template: str | None = None
    defaults: dict[str, str] = field(default_factory=dict)
    revision: str | None = None
    #: Items per task, exactly. None (the default) sizes tasks by work instead: about
    #: `task_tokens` estimated tokens (prompt + new tokens) each (see planning.py).
    chunk_size: int | None = None
    task_tokens: int = 32768
    priority: int = 5
    metadata: dict[str, Any] = field(default_factory=dict)
    deadline: datetime | timedelta | None = None
    idempotency_key: str | None = None
    truncate: bool = False
    trust_remote_code: bool = False
    #: Copy the result of an item identical to one that already succeeded (same model
    #: revision, engine, params with seed, rendered prompt) instead of generating it.
    reuse: bool = False
    #: Send each prompt through the model's chat template as the user turn (kind "chat"
    #: always does), with `system` as the system message where a record has none.
    chat: bool = False
    system: str | None = None
    #: A Jinja chat template to use instead of the model's own (stored with the job).
    chat_template: str | None = None
    #: Items sorted together by length before being cut into tasks (bounded memory).
    planning_window: int = 8192
    #: A window is cut into at least this many tasks (smaller than chunk_size if need
    #: be), so a small job still spreads over every worker instead of a few big tasks.
    min_tasks_per_window: int = 16
    #: Bounds on the input, enforced while it is read (GENQUEUE_MAX_* settings).
    limits: InputLimits = field(default_factory=InputLimits)
    #: Whose job it is (the HTTP API's tenants; the CLI submits as the default one).
    tenant: str = DEFAULT_TENANT
    #: When set, model names resolve through this mapping only (the models the operator
    #: offers by name): a name it lacks is a problem on its line (or a SpecError).
    offered: Mapping[str, Offered] | None = None
    #: OpenAI lines: every line's url must be this endpoint (a batch created for one).
    endpoint: str | None = None
    #: OpenAI lines: store into this batch, created by the caller (it is kept, and not
    #: deleted, when the input is refused: the caller records why).
    batch_id: str | None = None
    #: Where the job's end is announced (see storage/webhooks.py); checked by the caller.
    webhook_url: str | None = None

    @property
    def sizing(self) -> Sizing:
        return Sizing(
            chunk_size=self.chunk_size,
            task_tokens=self.task_tokens,
            min_tasks_per_window=self.min_tasks_per_window,
            new_tokens=self.params.max_new_tokens,
            replies=self.params.num_return_sequences,
        )


@dataclass(frozen=True)
class Submitted:
    #: The job's id, or the batch's when the input became a batch.
    job_id: str
    total_items: int
    tasks: int
    created: bool  # False when an idempotency key matched an existing job or batch
    #: The jobs it became (the one job, or the batch's).
    job_ids: tuple[str, ...] = ()

    @property
    def is_batch(self) -> bool:
        return self.job_id.startswith(loading.BATCH_PREFIX)


def _check(spec: JobSpec) -> None:
    if spec.chunk_size is not None and not 1 <= spec.chunk_size <= 100_000:
        raise SpecError(f"chunk_size: {spec.chunk_size} is out of range (1..100000)")
    if spec.task_tokens < 1:
        raise SpecError(f"task_tokens: {spec.task_tokens} must be at least 1")
    if not 0 <= spec.priority <= 9:
        raise SpecError(f"priority: {spec.priority} is out of range (0..9, 9 most urgent)")
    if spec.chat_template is not None and not spec.chat_template.strip():
        raise SpecError("chat_template is empty; give a Jinja chat template")
    if spec.chat_template is not None:
        _check_chat_template(spec.chat_template)
    if spec.metadata:
        _check_metadata(spec.metadata, spec.limits)
    if spec.endpoint is not None and spec.endpoint not in ENDPOINTS:
        raise SpecError(
            f"endpoint: {spec.endpoint!r} is not served; use {' or '.join(ENDPOINTS)} "
            "(embeddings and other endpoints are not available)"
        )


def _check_metadata(metadata: dict[str, Any], limits: InputLimits) -> None:
    """Metadata is stored as JSON with the job: text only (no NUL, no lone surrogate),
    nested at most as deep as a record, and at most MAX_METADATA_BYTES."""
    problem = value_problem(metadata, "metadata", limits)
    if problem is not None:
        raise SpecError(problem)
    try:
        size = len(json.dumps(metadata, ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise SpecError(f"metadata: {exc}; give a JSON object") from None
    if size > MAX_METADATA_BYTES:
        raise SpecError(
            f"metadata: {size:,} bytes as JSON; at most {MAX_METADATA_BYTES:,} are allowed "
            "(keep large data in the records)"
        )


def request_digest(fields: Mapping[str, Any]) -> str:
    """What an idempotency key was used for, as a digest of the request's fields: a
    repeat must match it (see `check_repeat`)."""
    text = json.dumps(fields, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _spec_digest(spec: JobSpec, name: str) -> str:
    deadline: Any = spec.deadline
    if isinstance(deadline, timedelta):
        deadline = deadline.total_seconds()
    return request_digest(
        {
            "input": name,
            "kind": spec.kind,
            "model": spec.model,
            "revision": spec.revision,
            "params": spec.params.model_dump(mode="json", exclude_defaults=True),
            "template": spec.template,
            "defaults": spec.defaults,
            "chunk_size": spec.chunk_size,
            "priority": spec.priority,
            "metadata": spec.metadata,
            "deadline": deadline,
            "truncate": spec.truncate,
            "trust_remote_code": spec.trust_remote_code,
            "reuse": spec.reuse,
            "chat": spec.chat,
            "system": spec.system,
            "chat_template": spec.chat_template,
            "endpoint": spec.endpoint,
            "webhook_url": spec.webhook_url,
        }
    )


def _check_chat_template(template: str) -> None:
    """A chat template that is no valid Jinja is refused before any work, with the line
    of its mistake (transformers parses it the same way, with loop controls on)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment(extensions=[loopcontrols]).parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise SpecError(
            f"chat_template is not a valid Jinja template: {exc.message} (line {exc.lineno})"
        ) from None


def check_repeat(what: str, made_id: str, options: Any, digest: str) -> None:
    """Raise IdempotencyConflict when a key made `made_id` for another request (its
    stored digest differs; rows stored before digests were kept pass)."""
    stored = (options or {}).get("request_digest")
    if stored is not None and stored != digest:
        raise IdempotencyConflict(
            f"this idempotency key was used for another request ({what} {made_id}, with "
            "other input or options); give a new request a new key"
        )


def _offered(spec: JobSpec, name: str) -> Offered | str:
    """What a model name stands for, or why it cannot be used."""
    if spec.offered is None:
        return Offered(name, spec.revision)
    found = spec.offered.get(name)
    if found is None:
        names = ", ".join(sorted(spec.offered)) or "none (the operator adds them)"
        return f"model {name!r} is not offered here; offered models: {names}"
    return found


def _deadline(spec: JobSpec) -> datetime | None:
    if spec.deadline is None:
        return None
    if isinstance(spec.deadline, timedelta):
        return utcnow() + spec.deadline
    return spec.deadline


def submit_job(
    store: Store,
    dispatcher: Dispatcher | None,
    source: str | Path | BinaryIO,
    spec: JobSpec,
    *,
    fmt: str | None = None,
    input_name: str | None = None,
) -> Submitted:
    """Validate and store a job (or a batch), then send its tasks (when a dispatcher is
    given; else the reconciler sends them). Raises InputError/SpecError with every
    problem found."""
    _check(spec)
    input_spec = JobInputSpec(
        kind=spec.kind,
        template=spec.template,
        defaults=spec.defaults,
        base_params=spec.params,
        chat=spec.chat,
        system=spec.system,
        limits=spec.limits,
    )
    name = input_name or (str(source) if isinstance(source, str | Path) else "<stdin>")
    resolved, items = open_items(source, input_spec, fmt=fmt)
    if resolved == "openai":
        return _submit_batch(store, dispatcher, items, spec, name)
    if spec.system is not None and not input_spec.is_chat:
        raise SpecError(
            "system: a system message goes with chat jobs; add --chat (chat: true) to send "
            "each prompt as the user turn, or leave the system message out"
        )
    if spec.model is None:
        raise SpecError(
            'model: give the model to run (--model, or "model" in an API job spec); only '
            "OpenAI lines name theirs"
        )
    offered = _offered(spec, spec.model)
    if isinstance(offered, str):
        raise SpecError(f"model: {offered}")
    model_ref = check_model(
        offered.model, spec.params, chat=input_spec.is_chat, chat_template=spec.chat_template
    )
    created = _create_job(
        store,
        spec,
        spec.kind,
        spec.model,
        model_ref,
        name,
        chat=input_spec.is_chat,
        fmt=resolved,
        revision=offered.revision,
    )
    if isinstance(created, str):
        view = view_job(store, created)
        check_repeat("job", created, view.job.options, _spec_digest(spec, name))
        return Submitted(created, view.job.total_items, 0, False, (created,))
    loader = Loader(store, dispatcher, name=name, planning_window=spec.planning_window)
    target = loader.add_job(created, spec.sizing, _fit(spec, model_ref))
    try:
        total = loader.load(items, lambda _item: target)
    except BaseException:
        lifecycle.delete_job(store, created.id)
        raise
    tasks = _open_and_send(store, dispatcher, loader.jobs, spec)
    return Submitted(created.id, total, tasks, True, (created.id,))


def _submit_batch(
    store: Store,
    dispatcher: Dispatcher | None,
    items: Any,
    spec: JobSpec,
    name: str,
) -> Submitted:
    """OpenAI batch lines: one job per (model, endpoint), grouped as a batch."""
    if spec.chat:
        raise SpecError("--chat does not apply to OpenAI batch lines: each line's url decides")
    batch: Batch | str
    if spec.batch_id is not None:
        batch = batches.get_batch(store, spec.batch_id, None)
    else:
        batch = loading.create_batch(
            store,
            input_name=name,
            meta=spec.metadata,
            options={"format": "openai", "request_digest": _spec_digest(spec, name)},
            idempotency_key=spec.idempotency_key,
            tenant=spec.tenant,
            webhook_url=spec.webhook_url,
        )
    if isinstance(batch, str):
        made = batches.get_batch(store, batch, None)
        check_repeat("batch", batch, made.options, _spec_digest(spec, name))
        view = batches.view_batch(store, batch)
        ids = tuple(v.job.id for v in view.jobs)
        return Submitted(batch, view.counts.total, 0, False, ids)
    loader = Loader(store, dispatcher, name=name, planning_window=spec.planning_window)
    groups: dict[tuple[str, str], Loading | str] = {}

    def job_for(item: ParsedItem) -> Loading | str:
        model = spec.model or item.model
        if model is None:
            return "body.model is missing; name the model in each line, or give --model"
        kind = item.kind or "generate"
        if spec.endpoint is not None and ENDPOINTS[spec.endpoint] != kind:
            url = next(u for u, k in ENDPOINTS.items() if k == kind)
            return (
                f"url is {url}, but this batch's endpoint is {spec.endpoint}; every line of "
                "a batch uses its endpoint (split the file, one batch per endpoint)"
            )
        key = (model, kind)
        if key not in groups:
            if len(groups) >= MAX_JOBS_PER_BATCH:
                return (
                    f"the input names more than {MAX_JOBS_PER_BATCH} models (and endpoints); "
                    "split it into several batches"
                )
            offered = _offered(spec, model)
            if isinstance(offered, str):
                groups[key] = offered
                return offered
            try:
                ref = check_model(
                    offered.model,
                    spec.params,
                    chat=kind == "chat",
                    chat_template=spec.chat_template,
                )
            except SpecError as exc:
                groups[key] = str(exc)
            else:
                job = _create_job(
                    store,
                    spec,
                    kind,
                    model,
                    ref,
                    name,
                    chat=kind == "chat",
                    batch_id=batch.id,
                    revision=offered.revision,
                )
                assert isinstance(job, Job)  # jobs of a batch have no idempotency key
                groups[key] = loader.add_job(job, spec.sizing, _fit(spec, ref))
        return groups[key]

    try:
        total = loader.load(items, job_for)
    except BaseException:
        for target in loader.jobs:
            lifecycle.delete_job(store, target.job.id)
        if spec.batch_id is None:
            batches.delete_batch(store, batch.id)
        raise
    tasks = _open_and_send(store, dispatcher, loader.jobs, spec)
    return Submitted(batch.id, total, tasks, True, tuple(t.job.id for t in loader.jobs))


def _fit(spec: JobSpec, model_ref: str) -> PromptFit | None:
    """Prompts that cannot fit are failed at submission, unless the job truncates them
    (the worker cuts those, by characters first, then exactly by tokens)."""
    return None if spec.truncate else PromptFit.for_model(model_ref)


def _create_job(
    store: Store,
    spec: JobSpec,
    kind: str,
    model: str,
    model_ref: str,
    name: str,
    *,
    chat: bool,
    fmt: str = "openai",
    batch_id: str | None = None,
    revision: str | None = None,
) -> Job | str:
    return loading.create_job(
        store,
        kind=kind,
        model=model_ref,
        revision=revision,
        queue=queue_for(model_ref, revision),
        tenant=spec.tenant,
        template=spec.template,
        params=spec.params.model_dump(mode="json"),
        chunk_size=spec.chunk_size or 0,  # 0 until planned (see open_job)
        priority=spec.priority,
        meta=spec.metadata,
        input_name=name,
        idempotency_key=None if batch_id else spec.idempotency_key,
        deadline_at=_deadline(spec),
        batch_id=batch_id,
        chat_template=spec.chat_template if chat else None,
        webhook_url=spec.webhook_url,
        options={
            "truncate": spec.truncate,
            "reuse": spec.reuse,
            "trust_remote_code": spec.trust_remote_code,
            "defaults": spec.defaults,
            "chat": chat,
            "model_name": model,
            "format": fmt,
            **({} if batch_id else {"request_digest": _spec_digest(spec, name)}),
        },
    )


def _open_and_send(
    store: Store, dispatcher: Dispatcher | None, targets: list[Loading], spec: JobSpec
) -> int:
    """Open every loaded job and send what its windows did not; returns the task count."""
    for target in targets:
        # A work-sized job records its mean task size: what `retry` cuts new tasks by.
        size = spec.chunk_size or -(-target.items // max(1, target.tasks))
        loading.open_job(store, target.job.id, target.items, chunk_size=size)
    if dispatcher is not None:  # the last windows (the whole input, when it fits in one)
        for target in targets:
            job_id = target.job.id
            try:
                todo = dispatch.tasks_to_send(store, older_than=utcnow(), job_id=job_id)
                dispatcher.send(store, todo)
            except Exception as exc:
                # The job is stored and open: the reconciler sends what is left.
                log.warning(
                    "job %s: sending its tasks failed (%s); the reconciler will", job_id, exc
                )
    return sum(t.tasks for t in targets)
