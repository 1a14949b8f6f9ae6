"""One account per email, whatever its spelling, on SQLite and PostgreSQL: look-alikes (KELVIN SIGN for K,
a composed or decomposed accent, any case, ß for ss) name the same account, which keeps the spelling it was
made with; either spelling signs in; the operator's commands take either too; and a database at revision
0004 holding two such accounts is not migrated: the migration stops, names both, and changes nothing.
"""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import pytest
from sqlalchemy import inspect, text

from clients.board import AlreadyExistsError, BoardClient
from tests.board.conftest import (
    BOARD_SERVER,
    PASSWORD,
    Backend,
    MemberFactory,
    RunningServer,
    database_engine,
    run_admin,
    start_board_server,
)
from tests.board.test_account_migration import upgrade_to
from tests.support import Processes


def spellings() -> list[tuple[str, str]]:
    """Pairs of spellings of one address, fresh for each test: (how it signs up, a look-alike)."""
    tag = uuid.uuid4().hex[:8]
    return [
        (f"kate-{tag}@example.org", f"\u212aate-{tag}@example.org"),  # KELVIN SIGN
        (f"\u00c9mile-{tag}@example.org", f"e\u0301mile-{tag}@example.org"),  # É composed; é decomposed
        (f"STRASSE-{tag}@Example.org", f"stra\u00dfe-{tag}@example.org"),  # ß folds to ss
    ]


def test_look_alike_emails_name_one_account_and_either_spelling_signs_in(board_server: RunningServer) -> None:
    with BoardClient(board_server.target) as anonymous:
        for first, look_alike in spellings():
            user = anonymous.create_user("First", first, PASSWORD)
            with pytest.raises(AlreadyExistsError):
                anonymous.create_user("Second", look_alike, PASSWORD)
            for spelling in (first, look_alike, first.upper(), f"  {look_alike} "):
                with BoardClient(board_server.target) as device:
                    signed = device.sign_in(spelling, PASSWORD)
                    assert signed.user.id == user.id
                    assert signed.user.email == first  # kept as it was typed at sign-up


def test_an_email_changed_to_a_look_alike_of_another_account_is_already_exists(
    members: MemberFactory,
) -> None:
    (first, look_alike), _, _ = spellings()
    owner, mover = members("Owner", email=first), members("Mover")
    with pytest.raises(AlreadyExistsError):
        mover.client.update_user(mover.id, email=look_alike, current_password=mover.password)
    assert owner.client.get_user(0).email == first


def test_the_operator_names_an_account_by_any_of_its_spellings(board_server: RunningServer) -> None:
    (first, look_alike), _, _ = spellings()
    member = board_server.sign_up("Operated", email=first)
    with member.client:
        granted = board_server.admin("grant", look_alike)
        assert granted.returncode == 0, granted.stderr
        assert member.client.get_user(0).admin


# --- migrating a database at 0004 --------------------------------------------------------------------------


def database_at_0004(backend: Backend, emails: list[str]) -> str:
    """A fresh database at revision 0004 with one user (no password) per email; its URL."""
    url = backend.new_database_url()
    with database_engine(url) as engine:
        upgrade_to(engine, "0004")
        with engine.begin() as conn:
            for email in emails:
                conn.execute(
                    text("INSERT INTO users (name, email, create_time) VALUES (:name, :email, :now)"),
                    {"name": "Old", "email": email, "now": "2026-01-02 03:04:05"},
                )
    return url


def state(url: str) -> dict[str, Any]:
    """What the migration may not change: the schema version, the users and their columns."""
    with database_engine(url) as engine, engine.connect() as conn:
        return {
            "version": conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one(),
            "users": conn.execute(text("SELECT id, name, email FROM users ORDER BY id")).all(),
            "columns": [c["name"] for c in inspect(conn).get_columns("users")],
        }


def test_a_migration_that_would_join_two_accounts_stops_naming_them_and_changes_nothing(
    backend: Backend,
) -> None:
    # Distinct for the old unique index on lower(email) on both backends (lower() does not normalise).
    composed, decomposed = "\u00c9mile@example.org", "e\u0301mile@example.org"
    url = database_at_0004(backend, ["ada@example.org", composed, decomposed])
    before = state(url)
    assert before["version"] == "0004" and "email_canonical" not in before["columns"]

    done = subprocess.run(
        [str(BOARD_SERVER), "migrate", "--database-url", url],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 1, done.stdout + done.stderr
    log = done.stdout + done.stderr
    ids = {email: row_id for row_id, _, email in before["users"]}
    assert f"user {ids[composed]} {composed!r}" in log and f"user {ids[decomposed]} {decomposed!r}" in log
    assert "ada@example.org" not in log and "Nothing was changed" in log
    assert state(url) == before


def test_a_migration_gives_existing_accounts_their_canonical_email(
    backend: Backend, processes: Processes
) -> None:
    url = database_at_0004(backend, ["KATE@example.org", "bob@example.org"])
    server = start_board_server(processes, url, backend.workdir)  # migrates at start
    set_password = run_admin(url, "set-password", "\u212aate@example.org", stdin=PASSWORD + "\n")
    assert set_password.returncode == 0, set_password.stderr
    with BoardClient(server.target) as device:
        assert device.sign_in("kate@EXAMPLE.org", PASSWORD).user.email == "KATE@example.org"
    with database_engine(url) as engine, engine.connect() as conn:
        found = conn.execute(text("SELECT email_canonical FROM users ORDER BY id")).scalars().all()
    assert found == ["kate@example.org", "bob@example.org"]
