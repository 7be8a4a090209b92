"""The models an operator offers by public name (`genqueue models add`), and how many
live workers serve each (their heartbeat rows, see storage/workers.py)."""

from __future__ import annotations

from sqlalchemy import select

from genqueue.storage.db import Store, utcnow
from genqueue.storage.errors import ModelNotOffered
from genqueue.storage.models import OfferedModel


def offer_model(
    store: Store,
    name: str,
    model: str,
    *,
    revision: str | None = None,
    engine: str | None = None,
) -> OfferedModel:
    """Offer `model` as `name` (replacing what that name meant before)."""
    with store.session() as s:
        row = s.get(OfferedModel, name)
        if row is None:
            row = OfferedModel(name=name, model=model, created_at=utcnow())
            s.add(row)
        row.model, row.revision, row.engine = model, revision, engine
    return row


def offered_models(store: Store) -> list[OfferedModel]:
    with store.read() as s:
        return list(s.scalars(select(OfferedModel).order_by(OfferedModel.name)))


def withdraw_model(store: Store, name: str) -> None:
    """Stop offering a model (raises ModelNotOffered). Jobs already submitted go on."""
    with store.session() as s:
        row = s.get(OfferedModel, name)
        if row is None:
            names = list(s.scalars(select(OfferedModel.name).order_by(OfferedModel.name)))
            raise ModelNotOffered(name, names)
        s.delete(row)
