"""The model TorchServe serves, as the board knows it: identity and class names, shared through the database.

TorchServe's handler answers a ``describe`` request (no image, no forward) with the model's identity. The
board stores what it learns in ``served_models`` (one row per TorchServe model name), so every replica knows
which model is current: re-tagging compares each attachment's ``model_archive_sha256`` with it, filters
check label names against its classes, previews name the mask's classes in their legend. Until a model has
described itself, the classes are the 21 PASCAL VOC classes the product is built for.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select

from board_server.database import Database
from board_server.models import ServedModel as ServedModelRow

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
_CACHE_S = 10.0

_TABLE = cast(Table, ServedModelRow.__table__)
_READ = select(_TABLE).where(_TABLE.c.name == bindparam("name"))

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """What TorchServe said about the model it serves."""

    arch: str
    weights: str
    sha256: str | None
    archive_sha256: str | None
    untrained: bool
    class_names: tuple[str, ...] = VOC_CLASSES

    @classmethod
    def from_answer(cls, model: Mapping[str, Any], class_names: Sequence[str] | None = None) -> ServedModel:
        """From a handler answer's ``model`` dict (and its ``class_names``, when it sent them)."""
        names = class_names or model.get("class_names") or VOC_CLASSES
        return cls(
            arch=str(model.get("arch") or "unknown"),
            weights=str(model.get("weights") or "unknown"),
            sha256=str(model["sha256"]) if model.get("sha256") else None,
            archive_sha256=str(model["archive_sha256"]) if model.get("archive_sha256") else None,
            untrained=bool(model.get("untrained", True)),
            class_names=tuple(str(n) for n in names),
        )


def store(conn: Connection, name: str, model: ServedModel) -> None:
    """Record ``model`` as the one served under ``name`` (replacing what was known)."""
    conn.execute(delete(_TABLE).where(_TABLE.c.name == name))
    conn.execute(
        insert(_TABLE),
        {
            "name": name,
            "arch": model.arch,
            "weights": model.weights,
            "sha256": model.sha256,
            "archive_sha256": model.archive_sha256,
            "untrained": model.untrained,
            "class_names": json.dumps(list(model.class_names)),
            "update_time": datetime.now(UTC),
        },
    )


def read(conn: Connection, name: str) -> ServedModel | None:
    row = conn.execute(_READ, {"name": name}).first()
    if row is None:
        return None
    try:
        names = tuple(str(n) for n in json.loads(row.class_names)) or VOC_CLASSES
    except (ValueError, TypeError):
        names = VOC_CLASSES
    return ServedModel(row.arch, row.weights, row.sha256, row.archive_sha256, bool(row.untrained), names)


class ServedModels:
    """The current model of one TorchServe model name, read from the database at most every 10 s."""

    def __init__(self, db: Database, name: str) -> None:
        self._db = db
        self.name = name
        self._cached: ServedModel | None = None
        self._read_at = float("-inf")

    async def current(self) -> ServedModel | None:
        """The model last described, or None before the first description."""
        if time.monotonic() - self._read_at > _CACHE_S:
            self._cached = await self._db.run_read(lambda conn: read(conn, self.name))
            self._read_at = time.monotonic()
        return self._cached

    async def class_names(self) -> tuple[str, ...]:
        """The classes a filter may name and a mask's values stand for."""
        model = await self.current()
        return model.class_names if model is not None else VOC_CLASSES

    def forget(self) -> None:
        """Read again at the next call (after this process stored a new description)."""
        self._read_at = float("-inf")
