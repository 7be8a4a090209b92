"""genqueue.client: the Python client (an entry point above the services): submit,
status, wait, results, cancel and retry, with no shelling out.

from genqueue.client import Client
gq = Client("postgresql://genqueue@db/genqueue", "redis://redis:6379/0")
job = gq.submit("reviews.jsonl", kind="generate", model="google/flan-t5-small",
                template="Sentiment of: {review}", max_new_tokens=8)
gq.wait(job)
for line in gq.results(job):
    print(line["custom_id"], line["output"])
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, BinaryIO

from genqueue.params import GenerationParams
from genqueue.settings import Settings


class Client:
    """A handle on one genqueue deployment (database + broker)."""

    def __init__(
        self,
        database_url: str | None = None,
        broker_url: str | None = None,
        *,
        settings: Settings | None = None,
        dispatch: bool = True,
    ) -> None:
        from genqueue.security import check_settings
        from genqueue.storage.db import open_store

        base = settings or Settings.from_env()
        self.settings = base.model_copy(
            update={
                "database_url": database_url or base.database_url,
                "broker_url": broker_url or base.broker_url,
            }
        )
        check_settings(self.settings, "client")
        self.store = open_store(self.settings.database_url)
        self._dispatcher: Any = None
        self._dispatch = dispatch and bool(self.settings.broker_url)

    @property
    def dispatcher(self) -> Any:
        if self._dispatcher is None and self._dispatch:
            from genqueue.scheduler.dispatch import Dispatcher

            self._dispatcher = Dispatcher(self.settings.broker_url or "")
        return self._dispatcher

    def submit(
        self,
        source: str | Path | BinaryIO | Iterable[dict[str, Any]],
        *,
        kind: str = "generate",
        model: str | None = None,
        template: str | None = None,
        params: GenerationParams | dict[str, Any] | None = None,
        defaults: dict[str, str] | None = None,
        revision: str | None = None,
        chunk_size: int | None = None,
        priority: int = 5,
        metadata: dict[str, Any] | None = None,
        deadline: datetime | timedelta | None = None,
        idempotency_key: str | None = None,
        truncate: bool = False,
        trust_remote_code: bool = False,
        reuse: bool = False,
        chat: bool = False,
        system: str | None = None,
        chat_template: str | None = None,
        format: str | None = None,
        **param_kwargs: Any,
    ) -> str:
        """Submit a job from a file path, a binary stream, or an iterable of records;
        returns its id. OpenAI batch lines (`format="openai"`, or detected) become a
        batch of one job per model they name, and the batch's id ("batch_...") is
        returned; every method below takes either id. Generation params come as
        `params=` or keyword arguments."""
        from genqueue.scheduler.submit import JobSpec, submit_job

        merged = dict(params.model_dump() if isinstance(params, GenerationParams) else params or {})
        merged.update(param_kwargs)
        spec = JobSpec(
            kind=kind,
            model=model,
            template=template,
            params=_params(merged),
            defaults=defaults or {},
            revision=revision,
            chunk_size=chunk_size or self.settings.chunk_size,
            task_tokens=self.settings.task_tokens,
            priority=priority,
            metadata=metadata or {},
            deadline=deadline,
            idempotency_key=idempotency_key,
            truncate=truncate,
            trust_remote_code=trust_remote_code,
            reuse=reuse,
            chat=chat,
            system=system,
            chat_template=chat_template,
            limits=self.settings.input_limits(),
        )
        if isinstance(source, str | Path) or hasattr(source, "read"):
            return submit_job(self.store, self.dispatcher, source, spec, fmt=format).job_id
        with _spool(source) as stream:
            return submit_job(
                self.store,
                self.dispatcher,
                stream,
                spec,
                fmt=format or "jsonl",
                input_name="<records>",
            ).job_id

    def status(self, job_id: str) -> dict[str, Any]:
        """A job's state and counts; for a batch, its jobs' summed, with each job's."""
        from genqueue.storage.batches import view_batch
        from genqueue.storage.loading import BATCH_PREFIX
        from genqueue.storage.status import view_job

        if job_id.startswith(BATCH_PREFIX):
            return view_batch(self.store, job_id).to_dict()
        return view_job(self.store, job_id).to_dict()

    def jobs(self, limit: int = 50, state: str | None = None) -> list[dict[str, Any]]:
        from genqueue.storage.status import list_jobs

        return [v.to_dict() for v in list_jobs(self.store, limit=limit, state=state)]

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 1.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Block until the job reaches a final state; returns its final status.
        Raises TimeoutError after `timeout` seconds."""
        from genqueue.storage.models import FINAL_JOB_STATES

        end = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(job_id)
            if on_progress:
                on_progress(st)
            if st["state"] in FINAL_JOB_STATES:
                return st
            if end is not None and time.monotonic() >= end:
                raise TimeoutError(f"job {job_id} still {st['state']} after {timeout}s")
            time.sleep(poll)

    def results(self, job_id: str, *, include_pending: bool = False) -> Iterator[dict[str, Any]]:
        """Result lines in input order (what is done so far on a running job)."""
        from genqueue.scheduler.exports import iter_lines

        for line in iter_lines(self.store, job_id, include_pending=include_pending):
            yield line.to_record()

    def export(
        self,
        job_id: str,
        path: str,
        *,
        format: str | None = None,
        include_pending: bool = False,
        errors: str | None = None,
    ) -> int:
        """Write the results to a file ("-": stdout); returns the lines written. With
        format "openai", `errors` names OpenAI's error file (failed, cancelled and
        expired lines go there)."""
        from genqueue.scheduler.exports import export_results

        return export_results(
            self.store,
            job_id,
            path,
            fmt=format,
            include_pending=include_pending,
            errors_path=errors,
        )

    def cancel(self, job_id: str) -> bool:
        """Stop a job (or every job of a batch); False when all had finished already."""
        from genqueue.scheduler.exports import job_rows
        from genqueue.storage.lifecycle import request_cancel

        changed = [request_cancel(self.store, job.id) for job in job_rows(self.store, job_id)]
        return any(changed)

    def retry(
        self,
        job_id: str,
        *,
        statuses: tuple[str, ...] | None = None,
        deadline: datetime | timedelta | None = None,
    ) -> int:
        """Re-run a finished job's (or batch's) failed/cancelled/expired items (or only
        `statuses`), keeping its successes; returns how many items were queued again."""
        from genqueue.scheduler.exports import job_rows
        from genqueue.storage.db import utcnow
        from genqueue.storage.dispatch import queued_tasks
        from genqueue.storage.retry import RETRYABLE, retry_items

        when = utcnow() + deadline if isinstance(deadline, timedelta) else deadline
        total = 0
        for job in job_rows(self.store, job_id):
            n = retry_items(self.store, job.id, statuses or RETRYABLE, deadline_at=when)
            if n and self.dispatcher is not None:
                self.dispatcher.send(self.store, queued_tasks(self.store, job_id=job.id))
            total += n
        return total

    def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.close()
        self.store.dispose()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _params(values: dict[str, Any]) -> GenerationParams:
    from pydantic import ValidationError

    from genqueue.params import describe_validation_error
    from genqueue.scheduler.errors import SpecError

    try:
        return GenerationParams.model_validate(values)
    except ValidationError as exc:
        raise SpecError(f"invalid generation params: {describe_validation_error(exc)}") from exc


class _spool:
    """Records → a JSONL temp file (spills to disk past 64 MB), read back as a stream."""

    def __init__(self, records: Iterable[dict[str, Any]]) -> None:
        self.records = records
        self.file: IO[bytes] | None = None

    def __enter__(self) -> BinaryIO:
        from genqueue.scheduler.errors import InputFormatError

        f = tempfile.SpooledTemporaryFile(max_size=64 << 20)
        for n, rec in enumerate(self.records, start=1):
            try:
                try:
                    line = json.dumps(rec, ensure_ascii=False).encode()
                except UnicodeEncodeError:  # a lone surrogate: the reader names it
                    line = json.dumps(rec).encode()
            except RecursionError:
                f.close()
                raise InputFormatError(
                    f"record {n}: nested too deeply to be written as JSON"
                ) from None
            except (TypeError, ValueError) as exc:
                f.close()
                raise InputFormatError(
                    f"record {n}: cannot be written as JSON ({exc}); records hold text, "
                    "numbers, booleans, lists and objects"
                ) from None
            f.write(line)
            f.write(b"\n")
        f.seek(0)
        self.file = f
        return f  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()
