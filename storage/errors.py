"""The SQL store's errors: one root, `StorageError`."""

from genqueue.errors import GenqueueError


class StorageError(GenqueueError):
    """Raised when the store cannot do what was asked (the root of storage's errors):
    an unsupported database URL, or an inconsistency it refuses to paper over."""


class JobNotFound(StorageError):
    """Raised when a job id does not exist in the store."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} in this database (list jobs with `genqueue jobs`)")
        self.job_id = job_id


class JobStateError(StorageError):
    """Raised when a job's state does not allow what was asked: cancelling a job that
    is still being submitted, retrying one that has not finished, removing work from a
    submission the reconciler took for abandoned. The message says what to do instead."""


class BatchNotFound(StorageError):
    """Raised when a batch id does not exist in the store."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch {batch_id!r} in this database (list jobs with `genqueue jobs`)")
        self.batch_id = batch_id


class FileNotFound(StorageError):
    """Raised when a file id does not exist in the store (or belongs to another tenant)."""

    def __init__(self, file_id: str) -> None:
        super().__init__(f"no file {file_id!r} (list files with GET /v1/files)")
        self.file_id = file_id


class ApiKeyNotFound(StorageError):
    """Raised when an API key id does not exist in the store."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key {key_id!r} (list keys with `genqueue keys list`)")
        self.key_id = key_id


class ModelNotOffered(StorageError):
    """Raised when a public model name is not in the offered models."""

    def __init__(self, name: str, offered: list[str]) -> None:
        names = ", ".join(offered) if offered else "none yet (`genqueue models add`)"
        super().__init__(f"model {name!r} is not offered here; offered models: {names}")
        self.name = name


class SchemaMismatch(StorageError):
    """Raised when the database's schema is not the one this genqueue was built for
    (older: run `genqueue db upgrade`; newer: upgrade genqueue on this host)."""
