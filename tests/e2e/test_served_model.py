"""A board with a segmentation target learns which model TorchServe serves (its identity and classes) at
start, through the handler's describe request, and records it for every replica: filters then name the served
model's classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from board_server.storage.served_models import read
from clients.board import InvalidArgumentError
from seg_handler import launcher as launch
from tests.board.conftest import database_engine, sign_up
from tests.e2e.conftest import TorchServe, start_tagging_board
from tests.support import Processes, wait_for


def test_the_board_records_the_served_model_and_filters_use_its_classes(
    running_torchserve: TorchServe, processes: Processes, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'served.db'}"
    board = start_tagging_board(processes, running_torchserve, url, tmp_path)
    meta = launch.archive_metadata(
        running_torchserve.settings.model_store / running_torchserve.settings.archive
    )

    def recorded() -> bool:
        with database_engine(url) as engine, engine.connect() as conn:
            model = read(conn, "deeplabv3")
        return model is not None and model.identity.archive_sha256 == meta["archive_sha256"]

    wait_for("the served model recorded", recorded, timeout=60)
    with database_engine(url) as engine, engine.connect() as conn:
        model = read(conn, "deeplabv3")
        rows = conn.exec_driver_sql("SELECT class_names FROM served_models").all()
    assert model is not None and list(model.class_names) == meta["class_names"]
    assert json.loads(rows[0][0]) == meta["class_names"]

    member = sign_up(board.target)
    with member.client as client:
        with pytest.raises(InvalidArgumentError) as refused:
            client.list_posts(filter="label.zebra")
        described = refused.value.violations[0].description
        assert all(name in described for name in meta["class_names"])
        assert list(client.list_posts(filter=f"label.{meta['class_names'][1]}").posts) == []
