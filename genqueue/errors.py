"""The root of every error genqueue raises on purpose.

Each subpackage has its own sub-root (`StorageError`, `SubmissionError`, `WorkerError`)
so callers can catch one family; the CLI and HTTP layers map them to messages/exits.
"""


class GenqueueError(Exception):
    """Raised for any failure genqueue reports to a user (the root of all its errors)."""
