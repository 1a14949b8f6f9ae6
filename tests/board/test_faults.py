"""A reply lost after the COMMIT, for real: the test-only fault point (BOARD_TEST_FAULT, runtime/faults.py)
makes a server process exit right after its CreatePost committed and before it answers. The client's retry
(the retry policy, same request_id) lands on another process (SQLite, a supervisor with two) or on another
replica (PostgreSQL, two servers on one database) and gets the post the first call made: exactly one exists.
Without retries the caller sees UNAVAILABLE for a post that exists, and its own retry with the same
request_id gets that post too. The fault point itself is refused off loopback and malformed."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from clients.board import BoardClient, UnavailableError
from tests.board.conftest import (
    BOARD_SERVER,
    Member,
    PostgresCluster,
    RunningServer,
    sign_up,
    start_board_server,
)
from tests.support import Processes, wait_for

FAULT_EXIT_STATUS = 70
FIRED = "test fault: exiting after the COMMIT of CreatePost, before its answer"


def fault_env(once_file: Path) -> dict[str, str]:
    return {"BOARD_TEST_FAULT": f"exit-after-commit:CreatePost:{once_file}"}


def titles(client: BoardClient, user_id: int) -> list[str]:
    return [p.title for p in client.iter_posts(user_id, page_size=1000)]


def supervised(processes: Processes, tmp_path: Path, once_file: Path) -> RunningServer:
    """Two server processes under a supervisor on one SQLite file, both armed with the fault."""
    url = f"sqlite:///{tmp_path / 'board.db'}"
    return start_board_server(processes, url, tmp_path, server_processes=2, env=fault_env(once_file))


def create_through_the_fault(client: BoardClient, user_id: int, once: Path) -> None:
    """CreatePost on servers armed with the fault: answered all the same (by the retry), and one post made."""
    post = client.create_post(0, "exactly once", "despite the lost answer", timeout=60)
    assert once.exists(), "the fault did not fire"
    assert titles(client, user_id) == ["exactly once"]
    assert client.get_post(post.id) == post


def test_a_process_dying_after_its_commit_is_retried_on_another_and_one_post_exists(
    processes: Processes, tmp_path: Path
) -> None:
    once = tmp_path / "fault-fired"
    server = supervised(processes, tmp_path, once)
    member = server.sign_up("Retried")
    with member.client as client:
        create_through_the_fault(client, member.id, once)
    wait_for("the supervisor to restart the process", lambda: "restarting it" in server.log(), 30)
    assert FIRED in server.log()
    assert server.proc.poll() is None


def test_without_retries_the_lost_reply_is_unavailable_and_a_retry_with_its_request_id_gets_the_post(
    processes: Processes, tmp_path: Path
) -> None:
    once = tmp_path / "fault-fired"
    server = supervised(processes, tmp_path, once)
    member = server.sign_up("Careful")
    member.client.close()
    request_id = str(uuid.uuid4())
    with (
        BoardClient(server.target, token=member.client.token, retries=False) as client,
        pytest.raises(UnavailableError),
    ):
        client.create_post(0, "committed", "but never answered", request_id=request_id)
    assert once.exists()
    # The caller's own retry, later and on a new channel (the old one's connection died with the process).
    with BoardClient(server.target, token=member.client.token) as client:
        assert titles(client, member.id) == ["committed"]  # the write happened
        retried = client.create_post(0, "committed", "but never answered", request_id=request_id)
        assert titles(client, member.id) == ["committed"]
        assert retried.title == "committed"


@pytest.mark.postgres
def test_a_replica_dying_after_its_commit_is_retried_on_the_other_and_one_post_exists(
    postgres_cluster: PostgresCluster, processes: Processes, tmp_path: Path
) -> None:
    url, once = postgres_cluster.new_database(), tmp_path / "fault-fired"
    replicas = [start_board_server(processes, url, tmp_path, env=fault_env(once)) for _ in range(2)]
    # One client over both replicas (gRPC's own address list: the first one until it goes away).
    target = "ipv4:" + ",".join(f"127.0.0.1:{replica.port}" for replica in replicas)
    member: Member = sign_up(target, "Replicated", timeout=60)
    with member.client as client:
        create_through_the_fault(client, member.id, once)
    died = [r for r in replicas if r.proc.poll() is not None]
    assert len(died) == 1 and died[0].proc.returncode == FAULT_EXIT_STATUS
    assert FIRED in died[0].log()


@pytest.mark.integration  # board-server runs and refuses
@pytest.mark.parametrize(
    ("address", "fault", "refusal"),
    [
        ("0.0.0.0:0", "exit-after-commit:CreatePost:/tmp/x", "is for tests only"),
        ("127.0.0.1:0", "crash-somewhere", "must be exit-after-commit:METHOD:FILE"),
    ],
)
def test_the_fault_point_is_refused_off_loopback_and_when_malformed(
    tmp_path: Path, address: str, fault: str, refusal: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOARD_")}
    # Should it start after all (the test fails then), it must not outlive the test: a timeout kills it.
    done = subprocess.run(
        [str(BOARD_SERVER), "--address", address, "--database-url", f"sqlite:///{tmp_path / 'x.db'}",
         "--auth", "on", "--allow-plaintext", "--processes", "1", "--metrics-address", "none"],
        env={**env, "BOARD_TEST_FAULT": fault}, cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert refusal in done.stderr
