"""The board tags through the Open Inference Protocol server (real KServe process, real gRPC) as it does
through TorchServe: the same labels for the same photos, the same model, the same verdict on a bad image, and
tagging that waits out the server's absence without using up attempts."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.gen.board.v1 import board_pb2
from tests.board.conftest import RunningServer, start_board_server
from tests.e2e.conftest import TorchServe, start_tagging_board
from tests.e2e.test_attachments_e2e import new_post, photo
from tests.support import Processes
from tests.torchserve_fixtures import OipServer

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

TAGGED = board_pb2.ATTACHMENT_STATUS_TAGGED
FAILED = board_pb2.ATTACHMENT_STATUS_FAILED
PENDING = board_pb2.ATTACHMENT_STATUS_PENDING


def oip_flags(server: OipServer) -> tuple[str, ...]:
    """board-server flags that tag through ``server`` (no key: it listens on loopback), quick for tests."""
    return (
        "--segmentation-protocol", "oip",
        "--segmentation-target", server.grpc_target,
        "--segmentation-timeout", "30",
        "--tagging-poll", "0.3",
        "--tagging-backoff-max", "1",
        "--tagging-lease", "40",
        "--tagging-workers", "2",
    )  # fmt: skip


def start_oip_board(processes: Processes, server: OipServer, workdir: Path) -> RunningServer:
    return start_board_server(
        processes, f"sqlite:///{workdir / 'board.db'}", workdir, extra=oip_flags(server)
    )


def upload_and_wait(board: RunningServer, images: list[tuple[str, bytes]]) -> list[board_pb2.Attachment]:
    with board.client() as client:
        post_id = new_post(client, "oip")
        ids = [client.add_attachment(post_id, name, data).id for name, data in images]
        return [client.wait_for_tagging(i, timeout=180) for i in ids]


def labels(attachment: board_pb2.Attachment) -> list[tuple[str, float, int]]:
    return [(label.name, round(label.fraction, 6), label.pixels) for label in attachment.labels]


def test_the_board_tags_through_the_oip_server_with_the_labels_torchserve_gives(
    torchserve: TorchServe, oip_server: OipServer, processes: Processes, tmp_path: Path
) -> None:
    torchserve.start()
    photos = [
        (f"{w}x{h}.jpg", photo(w, h, seed=w)) for w, h in ((640, 427), (300, 300), (96, 1024), (57, 33))
    ]
    cut = photo(320, 240, seed=9)
    images = [*photos, ("cut.jpg", cut[: len(cut) * 2 // 3])]  # the header passes the board; the pixels fail
    (tmp_path / "ts").mkdir()
    (tmp_path / "oip").mkdir()
    by_torchserve = start_tagging_board(
        processes, torchserve, f"sqlite:///{tmp_path / 'ts/board.db'}", tmp_path / "ts"
    )
    by_oip = start_oip_board(processes, oip_server, tmp_path / "oip")

    expected = upload_and_wait(by_torchserve, images)
    got = upload_and_wait(by_oip, images)

    assert [a.status for a in got] == [TAGGED] * len(photos) + [FAILED], [a.failure_reason for a in got]
    assert [a.status for a in expected] == [a.status for a in got]
    assert [labels(a) for a in got] == [labels(a) for a in expected]
    assert all(labels(a) for a in got[: len(photos)])
    # The same export: the same identity, so moving between the servers leaves every label current.
    assert got[0].model == expected[0].model
    assert got[-1].failure_reason.startswith("rejected by the model (400 corrupt)")
    assert got[-1].failure_reason == expected[-1].failure_reason
    assert [a.attempts for a in got] == [1] * len(images)
    assert "tagging via the Open Inference Protocol gRPC" in by_oip.log()


def test_uploads_wait_while_the_oip_server_is_down_and_are_tagged_when_it_is_back(
    oip_server: OipServer, processes: Processes, tmp_path: Path
) -> None:
    oip_server.start()
    board = start_oip_board(processes, oip_server, tmp_path)
    oip_server.stop()
    try:
        with board.client() as client:
            post_id = new_post(client, "oip-down")
            ids = [client.add_attachment(post_id, f"{i}.jpg", photo(80, 60, seed=i)).id for i in range(3)]
            still = [client.get_attachment(i) for i in ids]
            assert [a.status for a in still] == [PENDING] * 3
    finally:
        oip_server.start()
    with board.client() as client:
        done = [client.wait_for_tagging(i, timeout=180) for i in ids]
    assert [a.status for a in done] == [TAGGED] * 3, [a.failure_reason for a in done]
    # Unreachable is the server's fault, not the photo's: no attempt was used up while it was away.
    assert all(a.attempts <= 1 for a in done), [a.attempts for a in done]
    assert "tagging paused" in board.log()
