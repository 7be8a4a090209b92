"""The root of every error genqueue raises on purpose.

Each package has its own root below it (`StorageError`, `SchedulerError`, `WorkerError`,
`CliError`), with sub-roots that name a kind of failure, so callers can catch one
family; the CLI prints any of them as one line (docs/architecture.md, "Errors").
"""


class GenqueueError(Exception):
    """Raised for any failure genqueue reports to a user (the root of all its errors)."""
