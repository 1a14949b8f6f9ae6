"""Upgrading a database from before accounts (revision 0002) by starting a server on it, on SQLite and
PostgreSQL: every row survives (no cascade losses), foreign keys and the email index still hold, and users
created before accounts cannot sign in until the operator gives them a password."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, MetaData, select, text

import board_server.storage
from board_server.domain.accounts import BAD_CREDENTIALS
from clients.board import (
    AlreadyExistsError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from tests.board.conftest import PASSWORD, Backend, database_engine, sign_in, start_board_server, tiny_png
from tests.support import Processes

OLD_TABLES = ("users", "posts", "comments", "attachments", "attachment_labels")
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def upgrade_to(engine: Engine, revision: str) -> None:
    """Run the board's Alembic migrations up to ``revision`` on ``engine``."""
    package = Path(board_server.storage.__file__).resolve().parent  # where alembic.ini and migrations/ are
    config = Config(str(package / "alembic.ini"))
    config.set_main_option("script_location", str(package / "migrations"))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def reflect(engine: Engine) -> MetaData:
    metadata = MetaData()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # expression indexes (lower(email)) are not reflected
        metadata.reflect(engine)
    return metadata


def rows(engine: Engine, columns_of: dict[str, list[str]]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of the old tables, restricted to the columns they had at 0002, ordered by primary key."""
    metadata = reflect(engine)
    found = {}
    with engine.connect() as conn:
        for name, columns in columns_of.items():
            table = metadata.tables[name]
            query = select(*(table.c[c] for c in columns)).order_by(*table.primary_key)
            found[name] = [tuple(row) for row in conn.execute(query)]
    return found


@dataclass(frozen=True)
class OldBoard:
    """A board database at revision 0002, as it was before accounts."""

    url: str
    columns: dict[str, list[str]]
    before: dict[str, list[tuple[Any, ...]]]


def old_board(url: str) -> OldBoard:
    with database_engine(url) as engine:
        upgrade_to(engine, "0002")
        metadata = reflect(engine)
        sqlite = engine.dialect.name == "sqlite"

        def at(minutes: int) -> datetime:
            when = T0 + timedelta(minutes=minutes)
            return when.replace(tzinfo=None) if sqlite else when

        t = metadata.tables
        image = tiny_png()

        def insert(conn: Connection, table: str, values: list[dict[str, Any]]) -> None:
            """One row at a time, ids left to the database (as the server made them), checked in order."""
            for row in values:
                wanted = row.pop("id", None)
                made = conn.execute(t[table].insert(), row).inserted_primary_key
                assert wanted is None or (made is not None and tuple(made) == (wanted,))

        with engine.begin() as conn:
            insert(
                conn,
                "users",
                [
                    {"id": 1, "name": "Ada", "email": "Ada@Example.org", "create_time": at(0)},
                    {"id": 2, "name": "Bob", "email": "bob@example.org", "create_time": at(1)},
                    {"id": 3, "name": "Carol", "email": "carol@example.org", "create_time": at(2)},
                ],
            )
            insert(
                conn,
                "posts",
                [
                    {"id": 1, "user_id": 1, "title": "Ada's first", "content": "with photos",
                     "create_time": at(3), "update_time": at(3)},
                    {"id": 2, "user_id": 1, "title": "Ada's second", "content": "text",
                     "create_time": at(4), "update_time": at(5)},
                    {"id": 3, "user_id": 2, "title": "Bob's", "content": "text",
                     "create_time": at(6), "update_time": at(6)},
                ],
            )  # fmt: skip
            insert(
                conn,
                "comments",
                [
                    {"id": 1, "post_id": 1, "user_id": 2, "content": "Bob on Ada's",
                     "create_time": at(7), "update_time": at(7)},
                    {"id": 2, "post_id": 3, "user_id": 1, "content": "Ada on Bob's",
                     "create_time": at(8), "update_time": at(8)},
                    {"id": 3, "post_id": 1, "user_id": 3, "content": "Carol on Ada's",
                     "create_time": at(9), "update_time": at(9)},
                ],
            )  # fmt: skip
            attachment = {
                "filename": "a.png", "content_type": "image/png", "size_bytes": len(image), "width": 8,
                "height": 6, "data": image, "attempts": 0, "create_time": at(10), "update_time": at(10),
                "next_attempt_time": at(10),
            }  # fmt: skip
            insert(
                conn,
                "attachments",
                [
                    {**attachment, "id": 1, "post_id": 1, "status": "TAGGED", "mask_png": image,
                     "model_arch": "deeplabv3", "model_weights": "w", "model_sha256": "0" * 64,
                     "model_untrained": False, "attempts": 1},
                    {**attachment, "id": 2, "post_id": 1, "status": "PENDING"},
                    {**attachment, "id": 3, "post_id": 3, "status": "FAILED", "failure_reason": "too dark"},
                ],
            )  # fmt: skip
            insert(
                conn,
                "attachment_labels",
                [
                    {"attachment_id": 1, "name": "dog", "post_id": 1, "fraction": 0.25, "pixels": 12},
                    {"attachment_id": 1, "name": "background", "post_id": 1, "fraction": 0.75, "pixels": 36},
                ],
            )
        columns = {name: [c.name for c in metadata.tables[name].columns] for name in OLD_TABLES}
        return OldBoard(url, columns, rows(engine, columns))


@pytest.fixture
def old(backend: Backend) -> OldBoard:
    return old_board(backend.new_database_url())


def test_a_server_start_upgrades_every_row_intact(
    old: OldBoard, backend: Backend, processes: Processes
) -> None:
    assert sum(len(r) for r in old.before.values()) == 14
    server = start_board_server(processes, old.url, backend.workdir)
    with database_engine(old.url) as engine:
        assert rows(engine, old.columns) == old.before  # nothing lost, nothing changed
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() >= "0003"
            accounts = conn.execute(text("SELECT id, password_hash, admin FROM users ORDER BY id")).all()
            retag = conn.execute(text("SELECT DISTINCT retag_pending FROM attachments")).scalars().all()
    assert [(r.id, r.password_hash, bool(r.admin)) for r in accounts] == [
        (1, None, False),
        (2, None, False),
        (3, None, False),
    ]
    assert [bool(v) for v in retag] == [False]
    with server.client() as reader:  # and the API serves the old rows
        assert reader.get_post(1).title == "Ada's first"
        assert [c.id for c in reader.iter_comments(1)] == [1, 3]
        assert [a.id for a in reader.list_attachments(1)] == [1, 2]
        assert {label.name for label in reader.get_attachment(1).labels} == {"dog", "background"}
        assert [p.id for p in reader.iter_posts(label="dog")] == [1]


def test_users_from_before_accounts_sign_in_once_the_operator_sets_a_password(
    old: OldBoard, backend: Backend, processes: Processes
) -> None:
    server = start_board_server(processes, old.url, backend.workdir)
    with server.client() as board:
        for password in (PASSWORD, "anything at all"):  # there is no password to match
            with pytest.raises(UnauthenticatedError) as caught:
                board.sign_in("ada@example.org", password)
            assert caught.value.message == BAD_CREDENTIALS  # as for an unknown email
        # Sign-up cannot take over an old account: the email index survived the upgrade.
        with pytest.raises(AlreadyExistsError):
            board.create_user("Not Ada", "ADA@example.org", PASSWORD)

    done = server.admin("set-password", "ada@example.org", stdin=f"{PASSWORD}\n")
    assert done.returncode == 0, done.stderr
    with sign_in(server.target, "ada@example.org") as ada:
        assert ada.get_user(1).email == "Ada@Example.org"
        assert ada.update_post(2, title="edited after the upgrade").user_id == 1  # her old posts are hers
        with pytest.raises(PermissionDeniedError):
            ada.update_post(3, title="Bob's is not hers")
        # Deleting her post still cascades to its comments, attachments and labels: the foreign keys hold.
        ada.delete_post(1)
        for comment_id in (1, 3):
            with pytest.raises(NotFoundError):
                ada.get_comment(comment_id)
        for attachment_id in (1, 2):
            with pytest.raises(NotFoundError):
                ada.get_attachment(attachment_id)
        assert ada.get_comment(2).content == "Ada on Bob's"
        assert ada.get_attachment(3).failure_reason == "too dark"
    with server.client() as board, pytest.raises(UnauthenticatedError):
        board.sign_in("bob@example.org", PASSWORD)  # Bob still has no password
    with database_engine(old.url) as engine, engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM attachment_labels")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM attachments")).scalar_one() == 1
