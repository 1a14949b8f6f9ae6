"""The model each inference-server model name serves, as it last described itself: one row per name, so
every replica knows the current model (re-tags compare with it, filters check labels against its classes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select

from board_server.core.records import ModelIdentity, ServedModel
from board_server.storage.tables import ServedModel as ServedModelRow
from seg_handler.image_policy import VOC_CLASSES

_TABLE = cast(Table, ServedModelRow.__table__)
_READ = select(_TABLE).where(_TABLE.c.name == bindparam("name"))


def store(conn: Connection, name: str, model: ServedModel) -> None:
    """Record ``model`` as the one served under ``name`` (replacing what was known)."""
    identity = model.identity
    conn.execute(delete(_TABLE).where(_TABLE.c.name == name))
    conn.execute(
        insert(_TABLE),
        {
            "name": name,
            "arch": identity.arch,
            "weights": identity.weights,
            "sha256": identity.sha256,
            "archive_sha256": identity.archive_sha256,
            "untrained": identity.untrained,
            "class_names": json.dumps(list(model.class_names)),
            "update_time": datetime.now(UTC),
        },
    )


def read(conn: Connection, name: str) -> ServedModel | None:
    """The model last recorded under ``name``; None before any description."""
    row = conn.execute(_READ, {"name": name}).first()
    if row is None:
        return None
    try:
        names = tuple(str(n) for n in json.loads(row.class_names)) or VOC_CLASSES
    except (ValueError, TypeError):
        names = VOC_CLASSES
    identity = ModelIdentity(row.arch, row.weights, row.sha256, row.archive_sha256, bool(row.untrained))
    return ServedModel(identity, names)
