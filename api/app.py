"""The FastAPI application: its context (store, dispatcher, settings), the routers and
the error handlers. Built by `create_app` at the process edge, never at import."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from genqueue.api import (
    dashboard,
    errors,
    jobs,
    metrics,
    models,
    openai_batches,
    openai_files,
    uploads,
)
from genqueue.api.deps import ApiContext
from genqueue.protocol import cache_dir
from genqueue.scheduler.dispatch import Dispatcher
from genqueue.scheduler.webhooks import Deliverer
from genqueue.settings import Settings
from genqueue.storage.db import Store, open_store

#: Uploaded files' submissions run at most this many at a time.
SUBMIT_THREADS = 2


def files_dir(settings: Settings) -> Path:
    return Path(settings.files_dir) if settings.files_dir else cache_dir() / "files"


def create_app(
    settings: Settings, *, store: Store | None = None, dispatcher: Dispatcher | None = None
) -> FastAPI:
    """The API on `settings`' database and broker (or the store and dispatcher given)."""
    store = store or open_store(settings.database_url)
    if dispatcher is None and settings.broker_url:
        dispatcher = Dispatcher(settings.broker_url, name="genqueue-api")
    folder = files_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    ctx = ApiContext(
        settings=settings,
        store=store,
        dispatcher=dispatcher,
        files_dir=folder,
        background=ThreadPoolExecutor(SUBMIT_THREADS, thread_name_prefix="gq-submit"),
    )

    # -- metrics and webhooks: /metrics, and the webhook deliverer beside the API ---------
    stop_webhooks = threading.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        deliverer = Deliverer(ctx.store, settings).start(stop_webhooks)
        yield
        stop_webhooks.set()
        deliverer.join(timeout=settings.webhook_timeout_seconds + 5)
        ctx.background.shutdown(wait=True, cancel_futures=False)
        if ctx.dispatcher is not None:
            ctx.dispatcher.close()
        ctx.store.dispose()

    app = FastAPI(
        title="genqueue",
        summary="Batch text generation: a native jobs API and an OpenAI-compatible "
        "Files + Batches API",
        version="1",
        lifespan=lifespan,
    )
    app.state.genqueue = ctx
    errors.install(app)
    app.add_middleware(uploads.CapBodies)
    for module in (openai_files, openai_batches, models, jobs):
        app.include_router(module.router)
    app.include_router(metrics.router)  # /metrics (see api/metrics.py)
    # The dashboard: HTML pages at / for people logged in with an API key.
    dashboard.install(app)
    return app
