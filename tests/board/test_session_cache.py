"""Who a token names, remembered per process on PostgreSQL (board_server/domain/session_cache.py): a token is
read once and then remembered; a notification naming its user makes every process forget it; a listener
that lost its connection (and so may have missed one) makes its process forget everything.

The tokens are revoked behind the server's back here (a DELETE without a notification), so that only a
remembered token is still accepted: that shows what is remembered, and what a notification changes.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from clients.board import BoardClient, UnauthenticatedError
from tests.board.conftest import (
    PASSWORD,
    Member,
    PostgresCluster,
    RunningServer,
    database_engine,
    sign_up,
    start_board_server,
)
from tests.board.test_watch_notify import wait_for_listener
from tests.support import Processes, wait_for

pytestmark = pytest.mark.postgres


def revoke_behind_the_back(url: str, *members: Member) -> None:
    """Delete the members' tokens without telling anyone (no NOTIFY)."""
    with database_engine(url) as engine, engine.begin() as conn:
        for member in members:
            conn.execute(text("DELETE FROM access_tokens WHERE user_id = :id"), {"id": member.id})


def notify(url: str, payload: str) -> None:
    with database_engine(url) as engine, engine.begin() as conn:
        conn.execute(text("SELECT pg_notify('board_sessions', :payload)"), {"payload": payload})


def accepted(client: BoardClient, member: Member) -> bool:
    try:
        client.get_user(member.id)
    except UnauthenticatedError:
        return False
    return True


@pytest.fixture
def server(
    postgres_cluster: PostgresCluster, processes: Processes, tmp_path_factory: pytest.TempPathFactory
) -> RunningServer:
    url = postgres_cluster.new_database()
    started = start_board_server(processes, url, tmp_path_factory.mktemp("cache"))
    wait_for_listener(url, started)
    return started


def test_a_notification_forgets_the_tokens_of_the_users_it_names_and_no_others(server: RunningServer) -> None:
    ada, bob = sign_up(server.target, "Ada"), sign_up(server.target, "Bob")
    with ada.client, bob.client:
        assert accepted(ada.client, ada) and accepted(bob.client, bob)  # read once, remembered
        revoke_behind_the_back(server.database_url, ada, bob)
        assert accepted(ada.client, ada) and accepted(bob.client, bob)  # remembered: no read

        started = time.monotonic()
        notify(server.database_url, str(ada.id))
        wait_for("Ada's token forgotten", lambda: not accepted(ada.client, ada), timeout=10, interval=0.005)
        heard_after = time.monotonic() - started
        assert accepted(bob.client, bob)  # Bob was not named
        notify(server.database_url, "*")
        wait_for("every token forgotten", lambda: not accepted(bob.client, bob), timeout=10, interval=0.005)
    assert heard_after < 5, heard_after


def test_a_listener_that_lost_its_connection_forgets_every_token(server: RunningServer) -> None:
    ada = sign_up(server.target, "Ada")
    url = server.database_url
    with ada.client:
        assert accepted(ada.client, ada)
        revoke_behind_the_back(url, ada)
        assert accepted(ada.client, ada)
        dropped = wait_for_listener(url, server)
        with database_engine(url) as engine, engine.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dropped}).scalar()
        # Whatever was revoked while nobody listened is read again: no notification will come for it.
        wait_for("the token read again", lambda: not accepted(ada.client, ada), timeout=10, interval=0.01)
        wait_for_listener(url, server, other_than=(dropped,))
        assert "lost its connection" in server.log()


def test_sign_out_and_a_password_change_are_refused_at_once_by_the_replica_that_made_them(
    server: RunningServer,
) -> None:
    ada = sign_up(server.target, "Ada")
    with ada.client as first, server.client() as second:
        second.sign_in(ada.email, PASSWORD)
        assert accepted(first, ada) and accepted(second, ada)
        first.update_user(ada.id, password="another horse", current_password=PASSWORD)
        with pytest.raises(UnauthenticatedError):
            second.get_user(ada.id)
        assert accepted(first, ada)  # the caller's own session stays
        token = first.token
        first.sign_out()  # the client forgets the token; a client still holding it is refused
        with server.client(token=token) as holder, pytest.raises(UnauthenticatedError):
            holder.get_user(ada.id)
