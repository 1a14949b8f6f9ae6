"""Health that tells the truth, checked against a real outage: a board server on its own throw-away PostgreSQL
cluster, which the test stops and starts again.

While the database is down, grpc.health.v1 says NOT_SERVING (Check, and Watch delivers the change) and calls
that need the database answer UNAVAILABLE, never INTERNAL; once it is back, SERVING again and calls work.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.board import BoardClient, BoardClientError
from tests.board.conftest import PASSWORD, RunningServer, sign_up, start_board_server
from tests.support import Processes, free_port, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GENEROUS = 60.0

pytestmark = pytest.mark.postgres


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class OwnCluster:
    """A PostgreSQL cluster of this test alone (the suite's shared one must not go down)."""

    bindir: Path
    base: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), *args]
        subprocess.run(_as_postgres(command), check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-o", options, "-l", str(self.base / "pg.log"), "-w", "start")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")


@pytest.fixture
def cluster() -> Iterator[OwnCluster]:
    found = shutil.which("initdb")
    if found is None:
        pytest.skip("no initdb: the health outage test needs PostgreSQL binaries")
    base = Path(tempfile.mkdtemp(prefix="board-health-pg-"))
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(base, postgres.pw_uid, postgres.pw_gid)
    bindir = Path(found).parent
    initdb = [str(bindir / "initdb"), "-D", str(base / "data"), "-A", "trust", "-U", "postgres", "--no-sync"]
    subprocess.run(_as_postgres(initdb), check=True, capture_output=True, timeout=120)
    own = OwnCluster(bindir, base, free_port())
    own.start()
    try:
        yield own
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "stop"]),
            check=False, capture_output=True, timeout=120,
        )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


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


def test_health_follows_the_database_through_an_outage(
    cluster: OwnCluster, processes: Processes, tmp_path: Path
) -> None:
    server: RunningServer = start_board_server(
        processes, cluster.url, tmp_path,
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
