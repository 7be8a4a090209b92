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


class SchemaMismatch(StorageError):
    """Raised when the database's schema is not the one this genqueue was built for
    (older: run `genqueue db upgrade`; newer: upgrade genqueue on this host)."""
