"""One board, two real TorchServe instances (each started by the launcher on its own ports, each with its own
keys): tagging spreads over both, each server's renewed key is picked up from its own file, and a TorchServe
killed (kill -9) mid-run costs no attachment."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.gen.board.v1 import board_pb2
from seg_handler.launcher.renewal import key_renewer
from tests.board.conftest import RunningServer
from tests.board.prometheus import sample
from tests.e2e.conftest import TorchServe, start_tagging_board
from tests.e2e.test_attachments_e2e import new_post, photo
from tests.support import Processes, wait_for
from tests.torchserve_fixtures import running, torchserve_for

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

TAGGED = board_pb2.ATTACHMENT_STATUS_TAGGED
CALLS = "board_torchserve_calls_total"


@pytest.fixture(scope="module")
def second_torchserve(
    e2e_model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TorchServe]:
    """A second TorchServe on ports of its own, with keys of its own, over the same archive."""
    serve = torchserve_for(e2e_model_store, tmp_path_factory.mktemp("second"))
    with running(serve):
        yield serve


def start_two_server_board(
    processes: Processes, first: TorchServe, second: TorchServe, workdir: Path
) -> RunningServer:
    """A board tagging through both servers, each with its own key file, four calls at a time."""
    targets = f"{first.grpc_target},{second.grpc_target}"
    keys = f"{first.settings.inference_key_file},{second.settings.inference_key_file}"
    return start_tagging_board(
        processes,
        first,
        f"sqlite:///{workdir / 'board.db'}",
        workdir,
        max_attempts=3,
        workers=4,
        extra=(
            "--segmentation-target",
            targets,
            "--segmentation-token-file",
            keys,
            "--max-attachments-per-post",
            "80",
        ),
    )


def test_torchserve_does_not_serve_grpc_health_checks(running_torchserve: TorchServe) -> None:
    # Why the board checks its servers' health passively (tagging/targets.py) and not with gRPC's health
    # checking: TorchServe 0.12's gRPC port has no grpc.health.v1 service.
    with (
        grpc.insecure_channel(running_torchserve.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert isinstance(refused.value, grpc.Call)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def ok_calls(board: RunningServer, target: str) -> float:
    return sample(board, CALLS, outcome="ok", target=target)


def test_tagging_spreads_over_two_servers_and_survives_one_killed_mid_run(
    running_torchserve: TorchServe,
    second_torchserve: TorchServe,
    processes: Processes,
    tmp_path: Path,
) -> None:
    first, second = running_torchserve, second_torchserve
    assert first.settings.key_file.read_text() != second.settings.key_file.read_text()  # keys of their own
    board = start_two_server_board(processes, first, second, tmp_path)
    with board.client() as client:
        post_id = new_post(client, "two-servers")

        # 40 attachments: each server takes 35-65 % of them (round-robin over two).
        ids = [client.add_attachment(post_id, f"{i}.jpg", photo(96, 64, seed=i)).id for i in range(40)]
        done = [client.wait_for_tagging(i, timeout=240) for i in ids]
        assert [a.status for a in done] == [TAGGED] * 40, [a.failure_reason for a in done]
        by_first, by_second = ok_calls(board, first.grpc_target), ok_calls(board, second.grpc_target)
        assert by_first + by_second == 40
        assert 0.35 <= by_first / 40 <= 0.65, (by_first, by_second)

        # Each server's launcher renews that server's keys (here at once, as if a day had passed; the old keys
        # stop working): the board reads each new key from that server's own file, without a restart.
        before = [serve.settings.inference_key_file.read_text() for serve in (first, second)]
        for serve in (first, second):
            key_renewer(serve.settings).step(now=datetime.now(UTC) + timedelta(days=2))
        after = [serve.settings.inference_key_file.read_text() for serve in (first, second)]
        assert before[0] != after[0] and before[1] != after[1]

        # 40 more, and the second TorchServe (Java frontend and worker) killed -9 while they are tagged.
        more = [
            client.add_attachment(post_id, f"m{i}.jpg", photo(96, 64, seed=100 + i)).id for i in range(40)
        ]
        wait_for(
            "the second server to take calls again",
            lambda: ok_calls(board, second.grpc_target) > by_second,
            120,
        )
        assert second.proc is not None
        os.killpg(second.proc.pid, signal.SIGKILL)
        second.proc.wait(timeout=30)
        second.proc = None
        second.settings.pid_file.unlink(missing_ok=True)
        # And 10 after the kill: on a quiet machine the 40 may all be tagged or in flight on the first server
        # by then, and the board must still meet the dead one.
        after_kill = new_post(client, "after-the-kill")
        more += [
            client.add_attachment(after_kill, f"k{i}.jpg", photo(96, 64, seed=200 + i)).id for i in range(10)
        ]
        finished = [client.wait_for_tagging(i, timeout=240) for i in more]

    assert [a.status for a in finished] == [TAGGED] * 50, [a.failure_reason for a in finished]
    assert max(a.attempts for a in finished) <= 3, [a.attempts for a in finished]
    assert ok_calls(board, first.grpc_target) + ok_calls(board, second.grpc_target) == 90
    assert f"model server {second.grpc_target} skipped" in board.log()
    assert sample(board, CALLS, outcome="auth") == 0  # the renewed keys were used from the first call on
