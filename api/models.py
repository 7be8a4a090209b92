"""/v1/models: the models offered by name, with the live workers serving each."""

from __future__ import annotations

from fastapi import APIRouter

from genqueue.api.deps import Caller, Ctx
from genqueue.api.errors import ERROR_RESPONSES
from genqueue.api.schemas import ModelList, ModelObject
from genqueue.protocol import queue_for, resolve_model_ref
from genqueue.storage import catalog, workers
from genqueue.storage.db import as_utc

router = APIRouter(prefix="/v1/models", tags=["Models"], responses=ERROR_RESPONSES)


@router.get("", response_model=ModelList)
def list_models(ctx: Ctx, caller: Caller) -> ModelList:
    """The models lines may name (`body.model`), each with its live worker processes
    (seen within one lease period)."""
    live = workers.live_by_queue(ctx.store, within_seconds=ctx.settings.lease_seconds)
    data = []
    for m in catalog.offered_models(ctx.store):
        created = as_utc(m.created_at)
        data.append(
            ModelObject(
                id=m.name,
                created=int(created.timestamp()) if created else 0,
                workers=live.get(queue_for(resolve_model_ref(m.model), m.revision), 0),
            )
        )
    return ModelList(data=data)
