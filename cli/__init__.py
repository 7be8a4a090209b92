"""genqueue.cli: the `genqueue` command line (an entry point above the services)."""

from genqueue.cli import (  # noqa: F401 (they register)
    api_commands,
    db_commands,
    job_commands,
    service_commands,
    webhook_commands,
)
from genqueue.cli.app import app, main

__all__ = ["app", "main"]
