"""Scale-out for real: two board server processes on one PostgreSQL and one TorchServe.

Writes through one replica are read through the other, and the attachment queue is claimed by exactly one
replica per attachment: nothing is tagged twice, nothing is left behind.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from clients.gen.board.v1 import board_pb2
from tests.board.conftest import PostgresCluster
from tests.e2e.conftest import TorchServe, start_tagging_board
from tests.e2e.test_attachments_e2e import photo
from tests.support import Processes

pytestmark = pytest.mark.postgres

TAGGED_LINE = re.compile(r"attachment (\d+) TAGGED")


def test_two_replicas_share_data_and_tag_each_attachment_exactly_once(
    running_torchserve: TorchServe,
    postgres_cluster: PostgresCluster,
    processes: Processes,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url = postgres_cluster.new_database()
    replicas = [
        start_tagging_board(processes, running_torchserve, url, tmp_path_factory.mktemp(f"replica{i}"))
        for i in range(2)
    ]
    clients = [r.client() for r in replicas]
    try:
        a, b = clients
        password = "correct horse battery staple"
        user = a.create_user("Rep", "rep@example.org", password)
        for client in clients:  # one user signed in on both replicas: sessions live in the shared database
            client.sign_in("rep@example.org", password)
        assert b.get_user(user.id).email == "rep@example.org"
        post = b.create_post(user.id, "Shared", "written through replica B")
        assert a.get_post(post.id).title == "Shared"

        ids = [
            clients[i % 2].add_attachment(post.id, f"{i}.jpg", photo(80 + i, 60, seed=i)).id
            for i in range(16)
        ]
        # Each upload read back through the replica that did NOT take it.
        done = [
            clients[(i + 1) % 2].wait_for_tagging(attachment_id, timeout=120)
            for i, attachment_id in enumerate(ids)
        ]
        assert all(x.status == board_pb2.ATTACHMENT_STATUS_TAGGED for x in done), [
            x.failure_reason for x in done
        ]
        assert all(x.attempts == 1 for x in done), [x.attempts for x in done]
        assert {x.id for x in a.list_attachments(post.id)} == set(ids)
        assert {x.id for x in b.list_attachments(post.id)} == set(ids)
    finally:
        for client in clients:
            client.close()
    tagged_by = Counter(int(m) for r in replicas for m in TAGGED_LINE.findall(r.log()))
    assert sorted(tagged_by) == sorted(ids)
    assert set(tagged_by.values()) == {1}, "an attachment was tagged by both replicas"
    assert all("taken over" not in r.log() for r in replicas)
