"""Which model the inference server serves, as the use cases need it: the classes a filter may name and a
mask's values stand for, read from the database (shared by replicas) at most every few seconds. Until a
model has described itself, the classes are the 21 PASCAL VOC classes the product is built for."""

from __future__ import annotations

import time

from board_server.core.records import ServedModel
from board_server.storage import served_models
from board_server.storage.engine import Database
from seg_handler.image_policy import VOC_CLASSES

_CACHE_S = 10.0


class ServedModels:
    """The current model of one model name, read from the database at most every 10 s."""

    def __init__(self, db: Database, name: str) -> None:
        self._db = db
        self.name = name
        self._cached: ServedModel | None = None
        self._read_at = float("-inf")

    async def current(self) -> ServedModel | None:
        """The model last described, or None before the first description."""
        if time.monotonic() - self._read_at > _CACHE_S:
            self._cached = await self._db.run_read(lambda conn: served_models.read(conn, self.name))
            self._read_at = time.monotonic()
        return self._cached

    async def class_names(self) -> tuple[str, ...]:
        """The classes a filter may name and a mask's values stand for."""
        model = await self.current()
        return model.class_names if model is not None else VOC_CLASSES

    async def record(self, model: ServedModel) -> None:
        """Store ``model`` as the one served now, for every replica, and read it again at the next call."""
        await self._db.run_write(lambda conn: served_models.store(conn, self.name, model))
        self._read_at = float("-inf")
