"""A tagging lease that really expires: a board killed (-9) while its call to the model server is in flight
leaves its claim behind; another board on the same database takes the work over once the lease has run out,
and counts it in ``board_tagging_lease_expiries_total``. A claim of work nobody held is not counted.

The model server is tests/board/fake_torchserve.py, holding image calls until the test releases them, so the
call is in flight for as long as the test needs (no model, no sleeps).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from clients.gen.board.v1 import board_pb2
from tests.board.conftest import RunningServer, start_board_server, tiny_png
from tests.board.fake_torchserve import fake_torchserve
from tests.board.prometheus import sample
from tests.support import Processes

FAILED = board_pb2.ATTACHMENT_STATUS_FAILED
# The shortest lease the board allows beside a 3 s call timeout (the lease must exceed it by 5 s).
TIMEOUT_S, LEASE_S = 3, 8


def lease_expiries(board: RunningServer) -> float:
    return sample(board, "board_tagging_lease_expiries_total")


@pytest.mark.slow
def test_a_lease_left_by_a_killed_board_expires_and_is_counted_by_the_board_that_takes_over(
    processes: Processes, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'board.db'}"
    with fake_torchserve(hold=True) as fake:
        flags = (
            "--segmentation-target", fake.target, "--segmentation-timeout", str(TIMEOUT_S),
            "--tagging-lease", str(LEASE_S), "--tagging-poll", "0.3", "--tagging-workers", "1",
            "--processes", "1",
        )  # fmt: skip
        first = start_board_server(processes, url, tmp_path / "first", extra=flags)
        member = first.sign_up("Uploader")
        post = member.client.create_post(0, "lease", "a photo whose tagging outlives its board")
        held = member.client.add_attachment(post.id, "held.png", tiny_png()).id
        member.client.close()
        fake.wait_for_calls(1, timeout=60)  # the first board's call is in flight: it holds the lease
        processes.stop(first.proc, sig=signal.SIGKILL)  # with its lease, before any outcome

        second = start_board_server(processes, url, tmp_path / "second", extra=flags)
        fake.wait_for_calls(2, timeout=LEASE_S + 60)  # the second board took the work over
        assert lease_expiries(second) == 1
        taking_over = f"attachment {held}: the previous lease expired without an outcome; taking over"
        assert taking_over in second.log()

        fake.release()  # from now on every image is refused at once
        client = second.sign_up("Checker").client
        try:
            assert client.wait_for_tagging(held, timeout=60).attempts == 2  # the killed try was counted
            fresh = client.add_attachment(client.create_post(0, "fresh", "unheld").id, "f.png", tiny_png())
            assert client.wait_for_tagging(fresh.id, timeout=60).status == FAILED
        finally:
            client.close()
        assert lease_expiries(second) == 1  # a claim of work nobody held is no expiry
