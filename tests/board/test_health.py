"""Health that tells the truth, checked against a real outage: a board server on its own throw-away PostgreSQL
cluster, which the test stops and starts again.

While the database is down, grpc.health.v1 says NOT_SERVING (Check, and Watch delivers the change) and calls
that need the database answer UNAVAILABLE, never INTERNAL; once it is back, SERVING again and calls work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.postgres import Cluster, throwaway_cluster
from clients.board import BoardClient, BoardClientError
from tests.board.conftest import PASSWORD, RunningServer, sign_up, start_board_server
from tests.support import Processes, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GENEROUS = 60.0

pytestmark = pytest.mark.postgres


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of this test alone (the suite's shared one must not go down)."""
    with throwaway_cluster("board-health-pg-", durable=False, stop_mode="immediate") as own:
        if own is None:
            pytest.skip("no initdb: the health outage test needs PostgreSQL binaries")
        yield own


@dataclass
class Watcher:
    """A grpc.health.v1 Watch stream read in a thread: every status it delivers, in order."""

    target: str
    service: str = ""
    seen: list[int] = field(default_factory=list)
    _call: object = None

    def start(self) -> None:
        channel = grpc.insecure_channel(self.target)
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=self.service), timeout=600
        )
        self._call = stream

        def read() -> None:
            try:
                for response in stream:
                    self.seen.append(int(response.status))
            except grpc.RpcError:
                pass  # cancelled at the end of the test
            finally:
                channel.close()

        threading.Thread(target=read, name="health-watch", daemon=True).start()

    def changes(self) -> list[int]:
        """The statuses without repeats in a row."""
        return [s for i, s in enumerate(self.seen) if i == 0 or self.seen[i - 1] != s]

    def stop(self) -> None:
        cancel = getattr(self._call, "cancel", None)
        if callable(cancel):
            cancel()


def check(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=GENEROUS).status)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except BoardClientError as exc:
        return exc.code
    return grpc.StatusCode.OK


@pytest.mark.slow
def test_health_follows_the_database_through_an_outage(
    cluster: Cluster, processes: Processes, tmp_path: Path
) -> None:
    server: RunningServer = start_board_server(
        processes, cluster.url(), tmp_path,
        extra=("--auth", "on", "--processes", "1", "--metrics-address", "none", "--health-interval", "0.5"),
    )  # fmt: skip
    member = sign_up(server.target, "Healthy", timeout=GENEROUS)
    client, user, email = member.client, member.user, member.email
    post = client.create_post(user.id, "before", "the outage")
    watchers = [Watcher(server.target), Watcher(server.target, "board.v1.BoardService")]
    for watcher in watchers:
        watcher.start()
    try:
        assert check(server.target) == SERVING
        assert check(server.target, "board.v1.BoardService") == SERVING
        wait_for("the watches to see SERVING", lambda: all(w.seen for w in watchers), GENEROUS)

        cluster.stop()
        wait_for("health to say NOT_SERVING", lambda: check(server.target) == NOT_SERVING, GENEROUS)
        assert check(server.target, "board.v1.BoardService") == NOT_SERVING
        assert check(server.target, "liveness") == SERVING  # unready, not dead: no restart for an outage
        outage = {
            "GetPost": code_of(lambda: client.get_post(post.id)),
            "ListPosts": code_of(client.list_posts),
            "CreatePost": code_of(lambda: client.create_post(user.id, "during", "the outage")),
            "GetUser": code_of(lambda: client.get_user(user.id)),
            "SignIn": code_of(lambda: BoardClient(server.target, timeout=GENEROUS).sign_in(email, PASSWORD)),
        }
        assert set(outage.values()) == {grpc.StatusCode.UNAVAILABLE}, outage
        assert server.proc.poll() is None

        cluster.start()
        wait_for("health to say SERVING again", lambda: check(server.target) == SERVING, GENEROUS)
        recovering: list[grpc.StatusCode] = []

        def get_post_works() -> bool:
            recovering.append(code_of(lambda: client.get_post(post.id)))
            return recovering[-1] == grpc.StatusCode.OK

        wait_for("GetPost to work again", get_post_works, GENEROUS)
        assert set(recovering) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, recovering
        assert client.create_post(user.id, "after", "the outage").title == "after"
        wait_for(
            "the watches to see it all", lambda: all(w.changes()[-1:] == [SERVING] for w in watchers), 30
        )
        for watcher in watchers:
            assert watcher.changes() == [SERVING, NOT_SERVING, SERVING], watcher.seen
    finally:
        for watcher in watchers:
            watcher.stop()
        client.close()
