"""Attachments tagged by real TorchServe over gRPC (token auth), through the real board server.

Covers the pipeline's promises: upload → TAGGED with labels, provenance and a mask of the image's size; a bad
image → FAILED with the model's reason; TorchServe down → upload PENDING → TorchServe back → TAGGED with no
client action; board killed with pending work → restarted → the work completes.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from clients.board import BoardClient
from clients.gen.board.v1 import board_pb2
from seg_handler import launcher as launch
from tests.board.conftest import RunningServer
from tests.e2e.conftest import TorchServe, start_tagging_board
from tests.support import REPO_ROOT, Processes, wait_for

PENDING = board_pb2.ATTACHMENT_STATUS_PENDING
TAGGED = board_pb2.ATTACHMENT_STATUS_TAGGED
FAILED = board_pb2.ATTACHMENT_STATUS_FAILED


def photo(width: int, height: int, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A noisy gradient: compresses like a photo, so a truncated copy still has a readable header."""
    rng = random.Random(seed)
    across = Image.linear_gradient("L").rotate(90).resize((width, height))
    down = Image.linear_gradient("L").resize((width, height))
    noise = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    image = Image.merge("RGB", (across, down, noise))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def new_post(client: BoardClient, tag: str) -> int:
    """A new user's post; ``client`` is left signed in as that user (it may attach photos to the post)."""
    password = "correct horse battery staple"
    user = client.create_user("Tess", f"tess-{tag}-{time.monotonic_ns()}@example.org", password)
    client.sign_in(user.email, password)
    return client.create_post(user.id, f"Photos {tag}", "Tagged by the model server").id


@pytest.fixture(scope="module")
def board(
    torchserve: TorchServe, module_processes: Processes, tmp_path_factory: pytest.TempPathFactory
) -> RunningServer:
    workdir = tmp_path_factory.mktemp("e2e-board")
    return start_tagging_board(module_processes, torchserve, f"sqlite:///{workdir / 'board.db'}", workdir)


def test_upload_is_tagged_with_labels_provenance_and_a_mask_of_its_size(
    running_torchserve: TorchServe, board: RunningServer
) -> None:
    with board.client() as client:
        post_id = new_post(client, "tagged")
        data = photo(97, 61)
        added = client.add_attachment(post_id, "street.jpg", data)
        assert added.status == PENDING
        assert (added.width, added.height, added.size_bytes) == (97, 61, len(data))
        tagged = client.wait_for_tagging(added.id, timeout=60)
        assert tagged.status == TAGGED, tagged.failure_reason
        assert tagged.labels, "a tagged image has at least one class"
        assert [x.fraction for x in tagged.labels] == sorted(
            (x.fraction for x in tagged.labels), reverse=True
        )
        assert sum(x.fraction for x in tagged.labels) == pytest.approx(1.0, abs=1e-3)
        assert sum(x.pixels for x in tagged.labels) == 97 * 61
        assert tagged.model.arch == "deeplabv3_mobilenet_v3_large"
        assert tagged.model.untrained is True
        # Stored with the served model's exact identity (what re-tagging compares).
        served = launch.archive_metadata(running_torchserve.settings.model_store / "deeplabv3.mar")
        with sqlite3.connect(board.database_url.removeprefix("sqlite:///")) as db:
            (stored,) = db.execute(
                "SELECT model_archive_sha256 FROM attachments WHERE id = ?", (added.id,)
            ).fetchone()
        assert stored == served["archive_sha256"] and len(stored) == 64
        mask = Image.open(io.BytesIO(client.get_attachment_mask(added.id)))
        assert (mask.format, mask.size) == ("PNG", (97, 61))
        content = client.get_attachment_content(added.id)
        assert (content.data, content.content_type) == (data, "image/jpeg")

        top = tagged.labels[0]
        found = [p.id for p in client.iter_posts(label=top.name, min_label_fraction=top.fraction)]
        assert post_id in found
        assert post_id not in [p.id for p in client.iter_posts(label="no-such-class")]


def test_image_the_model_rejects_is_failed_with_its_reason(
    running_torchserve: TorchServe, board: RunningServer
) -> None:
    data = photo(320, 240, seed=3)
    truncated = data[: len(data) * 2 // 3]  # the header is intact (board accepts it); the pixels are not
    with board.client() as client:
        post_id = new_post(client, "bad")
        added = client.add_attachment(post_id, "cut.jpg", truncated)
        assert added.status == PENDING
        failed = client.wait_for_tagging(added.id, timeout=60)
    assert failed.status == FAILED
    assert "rejected by the model (400" in failed.failure_reason
    assert not failed.labels


def test_upload_while_torchserve_is_down_is_tagged_once_it_is_back(
    torchserve: TorchServe, board: RunningServer
) -> None:
    torchserve.start()
    torchserve.stop()
    with board.client() as client:
        post_id = new_post(client, "outage")
        paused = board.log().count("tagging paused")
        added = client.add_attachment(post_id, "later.png", photo(50, 40, seed=5, fmt="PNG"))
        wait_for(
            "calls against the closed port", lambda: board.log().count("tagging paused") >= paused + 2, 60
        )
        waiting = client.get_attachment(added.id)
        assert waiting.status == PENDING
        assert waiting.attempts == 0  # an outage gives its attempts back
        torchserve.start()  # same ports, new token: the board reconnects and re-reads the key file
        tagged = client.wait_for_tagging(added.id, timeout=60)
    assert tagged.status == TAGGED, tagged.failure_reason
    assert "TAGGED" in board.log()


def test_board_killed_with_pending_work_finishes_it_after_restart(
    running_torchserve: TorchServe, processes: Processes, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'board.db'}"
    # A short lease (the call timeout + 5 s, the least the board accepts), so that work claimed by the killed
    # process is taken over soon after the restart.
    first = start_tagging_board(processes, running_torchserve, url, tmp_path, lease_s=8, timeout_s=3)
    with first.client() as client:
        post_id = new_post(client, "kill")
        ids = [client.add_attachment(post_id, f"{i}.jpg", photo(640, 480, seed=i)).id for i in range(8)]
    processes.stop(first.proc, sig=signal.SIGKILL)
    with sqlite3.connect(tmp_path / "board.db") as db:
        (pending,) = db.execute("SELECT count(*) FROM attachments WHERE status = 'PENDING'").fetchone()
    assert pending > 0, "the kill came too late to leave work pending"
    second = start_tagging_board(processes, running_torchserve, url, tmp_path, lease_s=8, timeout_s=3)
    with second.client() as client:
        done = [client.wait_for_tagging(i, timeout=90) for i in ids]
        assert [a.status for a in done] == [TAGGED] * 8, [a.failure_reason for a in done]
        assert len(client.list_attachments(post_id)) == 8


def _board_cli(board: RunningServer, *args: str, token: str | None = None) -> dict[str, Any]:
    command = [str(REPO_ROOT / ".venv" / "bin" / "board"), "--target", board.target, "--json", *args]
    env = {**os.environ, "BOARD_TOKEN": token} if token else None  # signed in as the post's author
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_board_cli_attach_wait_and_list_by_label(
    running_torchserve: TorchServe, board: RunningServer, tmp_path: Path
) -> None:
    (tmp_path / "a.png").write_bytes(photo(60, 40, seed=11, fmt="PNG"))
    (tmp_path / "b.jpg").write_bytes(photo(70, 50, seed=12))
    with board.client() as client:
        post_id = new_post(client, "cli")
        token = client.token
    attached = _board_cli(board, "attach", str(post_id), str(tmp_path), "--wait", token=token)["attachments"]
    assert [a["filename"] for a in attached] == ["a.png", "b.jpg"]
    assert {a["status"] for a in attached} == {"ATTACHMENT_STATUS_TAGGED"}
    top = attached[0]["labels"][0]["name"]
    listed = _board_cli(board, "posts", "list", "--label", top, "--all", token=token)["posts"]
    assert post_id in [int(p["id"]) for p in listed]
    mask = tmp_path / "mask.png"
    _board_cli(board, "attachments", "mask", str(attached[0]["id"]), "--out", str(mask), token=token)
    assert Image.open(mask).size == (60, 40)


def test_board_demo_tags_photos_and_finds_posts_by_label(
    running_torchserve: TorchServe, board: RunningServer
) -> None:
    result = _board_cli(board, "demo", "--limit", "2")
    statuses = {a["status"] for a in result["attachments"]}
    assert statuses == {"ATTACHMENT_STATUS_TAGGED"}
    for posts in result["posts_by_label"].values():
        assert result["post_id"] in posts
