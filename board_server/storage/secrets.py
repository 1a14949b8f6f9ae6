"""Deployment secrets shared by every replica through the database (the page-token key)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, bindparam, insert, select

from board_server.storage.tables import DeploymentSecret

_SECRETS = cast(Table, DeploymentSecret.__table__)
_READ_SECRET = select(_SECRETS.c.value).where(_SECRETS.c.name == bindparam("name"))


def read_secret(conn: Connection, name: str) -> bytes | None:
    row = conn.execute(_READ_SECRET, {"name": name}).first()
    return None if row is None else bytes(row.value)


def add_secret(conn: Connection, name: str, value: bytes, now: datetime) -> None:
    """Insert a secret; raise IntegrityError when another server created it first."""
    conn.execute(insert(_SECRETS), {"name": name, "value": value, "create_time": now})
