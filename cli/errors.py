"""The command line's errors: one root, `CliError`.

Errors from the rooms below (a rejected input, a missing job) reach `main` as their own
`GenqueueError`s and are printed the same way: one line, no traceback.
"""

from __future__ import annotations

from genqueue.errors import GenqueueError


class CliError(GenqueueError):
    """Raised for a problem with how a command was called or with what it runs on this
    machine (the root of the command line's errors)."""


class OptionError(CliError):
    """Raised when a command-line option has an invalid value; the message names it."""


class LocalWorkersError(CliError):
    """Raised when the worker processes `genqueue run` started keep exiting before
    doing any work; the message shows the end of their log."""
