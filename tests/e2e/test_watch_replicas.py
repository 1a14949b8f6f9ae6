"""WatchAttachment across replicas, with a real TorchServe: a photo uploaded and watched through replica A
(which does not tag) is tagged by replica B on the same PostgreSQL; A's watcher sees PENDING then TAGGED and
the stream ends. B's /metrics counts the TorchServe call and the tagging latency."""

from __future__ import annotations

import urllib.request

import pytest

from clients.gen.board.v1 import board_pb2
from tests.board.conftest import PostgresCluster, sign_in, sign_up, start_board_server
from tests.board.test_watch_and_metrics import METRICS_LINE
from tests.e2e.conftest import TorchServe, start_tagging_board
from tests.e2e.test_attachments_e2e import photo
from tests.support import Processes, wait_for

pytestmark = pytest.mark.postgres


def test_a_watcher_on_one_replica_sees_the_tagging_done_by_another(
    running_torchserve: TorchServe,
    postgres_cluster: PostgresCluster,
    processes: Processes,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url = postgres_cluster.new_database()
    watched = start_board_server(processes, url, tmp_path_factory.mktemp("a"), extra=("--watch-poll", "0.3"))
    tagger = start_tagging_board(processes, running_torchserve, url, tmp_path_factory.mktemp("b"))
    member = sign_up(watched.target, "Watcher")
    with member.client as client:
        post = client.create_post(0, "across replicas", "uploaded and watched on A, tagged by B")
        attachment = client.add_attachment(post.id, "p.jpg", photo(96, 72, seed=3))
        statuses = [item.status for item in client.watch_attachment(attachment.id, timeout=120)]
    assert statuses[0] == board_pb2.ATTACHMENT_STATUS_PENDING
    assert statuses[-1] == board_pb2.ATTACHMENT_STATUS_TAGGED, statuses
    # A's watcher may hear of the commit (NOTIFY) before B has written its log line and counted the call.
    tagged = f"attachment {attachment.id} TAGGED"
    wait_for("B to log the tagging", lambda: tagged in tagger.log(), timeout=10)
    assert "TAGGED" not in watched.log()  # A has no segmentation target: B did the work

    match = METRICS_LINE.search(tagger.log())
    assert match
    target = running_torchserve.grpc_target
    counted = (
        f'board_torchserve_calls_total{{outcome="ok",target="{target}"}} 1.0',
        "board_tagging_latency_seconds_count 1.0",
    )

    def metrics_counted() -> bool:
        with urllib.request.urlopen(match.group(1), timeout=10) as response:
            text = response.read().decode()
        return all(line in text for line in counted)

    wait_for("B's metrics to count the call", metrics_counted, timeout=10)
    with sign_in(tagger.target, member.email) as on_b:
        assert on_b.get_attachment(attachment.id).status == board_pb2.ATTACHMENT_STATUS_TAGGED
