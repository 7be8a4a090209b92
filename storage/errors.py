"""Errors raised by the SQL store."""

from genqueue.errors import GenqueueError


class StorageError(GenqueueError):
    """Raised when the store cannot do what was asked (the sub-root for storage)."""


class JobNotFound(StorageError):
    """Raised when a job id does not exist in the store."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} in this database (list jobs with `genqueue jobs`)")
        self.job_id = job_id
