"""genqueue.cli: the `genqueue` command line (an entry point above the services)."""

from genqueue.cli import api_commands, job_commands, service_commands  # noqa: F401 (they register)
from genqueue.cli.app import app, main

__all__ = ["app", "main"]
