"""genqueue.api: the HTTP API (an entry point above the services), a native jobs API
and an OpenAI-compatible Files + Batches API, served by `genqueue api` and
`genqueue serve`. It calls the same scheduler and storage functions as the command
line and the Python client, and never imports worker code or torch."""

from genqueue.api.app import create_app

__all__ = ["create_app"]
