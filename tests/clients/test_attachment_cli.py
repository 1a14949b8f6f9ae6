"""`board attach --wait`, `attachments watch|retry|list|preview`, `posts list --filter …` and `board demo`,
against a real board server (auth on) that tags through the session TorchServe (tests/torchserve_fixtures.py:
an archive from training.export, random weights, behind the real handler).

The labels of a random model are whatever it finds, so the tests compare what the CLI prints with what the
board stored (read back with the Python client) and with the served archive's identity. Where a test needs
an attachment held PENDING, it stops TorchServe (the board pauses tagging, keeps the work) and starts it
again.

Every RPC and field the CLI sends is served (GetAttachmentPreview, ListPosts' filter, order_by and view), so
each is checked in full: a server that answers UNIMPLEMENTED or ignores a field fails its test.
"""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import threading
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from PIL import Image
from rich.console import Console

from clients.cli import post_attachments_text
from clients.gen.board.v1 import board_pb2
from tests.board.conftest import BOARD_SERVER, Member, RunningServer, sign_up
from tests.board.prometheus import sample
from tests.clients.conftest import AUTH_ON, Cli, Ran, make_cli, shown_labels, shown_model
from tests.support import Processes, wait_for
from tests.torchserve_fixtures import TorchServe, start_tagging_board

TAGGED = board_pb2.ATTACHMENT_STATUS_TAGGED


@pytest.fixture(scope="module")
def board(
    torchserve: TorchServe, module_processes: Processes, tmp_path_factory: pytest.TempPathFactory
) -> RunningServer:
    """This module's board (auth on) tags through the session TorchServe (the conftest's tags nothing)."""
    workdir = tmp_path_factory.mktemp("board-cli")
    url = f"sqlite:///{workdir / 'board.db'}"
    return start_tagging_board(module_processes, torchserve, url, workdir, extra=AUTH_ON)


def photo(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    Image.new("RGB", size, (200, 120, 40)).save(path)
    return path


def png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (20, 120, 240)).save(buffer, "PNG")
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    """A noisy JPEG cut short: its header is intact (the board takes it), its pixels are not (the model's
    handler decodes them, and rejects the image)."""
    rng = random.Random(3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (320, 240), rng.randbytes(320 * 240 * 3)).save(buffer, "JPEG")
    data = buffer.getvalue()
    return data[: len(data) * 2 // 3]


def tagged_photo(
    member: Member, title: str, filename: str, size: tuple[int, int] = (64, 48)
) -> tuple[int, int]:
    """A new post of ``member`` with one photo, once the model has tagged it: (post id, attachment id)."""
    post = member.client.create_post(0, title, "a tagged photo")
    added = member.client.add_attachment(post.id, filename, png_bytes(size))
    assert member.client.wait_for_tagging(added.id, timeout=60).status == TAGGED
    return post.id, added.id


def open_watchers(board: RunningServer) -> float:
    """The server's board_watchers gauge (open WatchAttachment streams)."""
    return sample(board, "board_watchers")


def test_attach_wait_streams_each_status_change(
    cli: Cli, logged_in: Member, running_torchserve: TorchServe, board: RunningServer, tmp_path: Path
) -> None:
    post = logged_in.client.create_post(0, "streamed", "attach --wait")
    image = photo(tmp_path / "a.png")
    # TorchServe answers nothing until the CLI is watching: the change to TAGGED must come by the stream.
    before = open_watchers(board)
    done: list[Ran] = []
    runner = threading.Thread(target=lambda: done.append(cli("attach", post.id, image, "--wait")))
    with running_torchserve.frozen():
        runner.start()
        wait_for("the CLI's WatchAttachment stream", lambda: open_watchers(board) > before, timeout=20)
    runner.join(timeout=300)
    ran = done[0]
    assert ran.code == 0, ran.both
    lines = ran.out.splitlines()
    pending = next(i for i, line in enumerate(lines) if re.fullmatch(r"#\d+ a\.png: PENDING", line))
    prefix = lines[pending].split(":")[0]
    tagged = next(i for i, line in enumerate(lines) if line.startswith(prefix + ": TAGGED"))
    assert pending < tagged
    attachment = logged_in.client.get_attachment(int(prefix.removeprefix("#").split()[0]))
    assert attachment.status == TAGGED and attachment.labels
    expected = f"{prefix}: TAGGED: {shown_labels(attachment)} ({shown_model(running_torchserve)})"
    assert lines[tagged] == expected


def test_attach_wait_json_prints_one_document_and_progress_on_stderr(
    cli: Cli, logged_in: Member, running_torchserve: TorchServe, tmp_path: Path
) -> None:
    post = logged_in.client.create_post(0, "json", "attach --wait --json")
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "b.jpg"), photo(folder / "a.png")
    ran = cli("--json", "attach", post.id, folder, "--wait")
    assert ran.code == 0, ran.both
    attached = json.loads(ran.out)["attachments"]
    assert [a["filename"] for a in attached] == ["a.png", "b.jpg"]
    assert {a["status"] for a in attached} == {"ATTACHMENT_STATUS_TAGGED"}
    assert attached[0]["model"]["archive_sha256"] == running_torchserve.archive_metadata["archive_sha256"]
    assert ": TAGGED" in ran.err  # the streamed progress, kept out of the JSON


def test_watch_shows_the_models_reason_for_a_rejected_image_and_retry_asks_again(
    cli: Cli, logged_in: Member, running_torchserve: TorchServe
) -> None:
    post = logged_in.client.create_post(0, "rejected", "a photo the model cannot read")
    added = logged_in.client.add_attachment(post.id, "broken.jpg", truncated_jpeg())
    watched = cli("attachments", "watch", added.id)
    assert watched.code == 1  # watching ended, but not TAGGED
    reason = "FAILED: rejected by the model (400 corrupt): truncated or corrupt image data"
    assert f"#{added.id} broken.jpg: {reason}" in watched.out

    retried = cli("attachments", "retry", added.id, "--wait")
    assert retried.code == 1, retried.both  # the same bytes get the same answer
    assert f"#{added.id} broken.jpg: PENDING" in retried.out
    assert f"#{added.id} broken.jpg: {reason}" in retried.out


def test_watch_and_retry_an_attachment_that_failed_for_a_passing_reason(
    running_torchserve: TorchServe,
    processes: Processes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite:///{tmp_path / 'retry.db'}"
    # A board whose calls time out at once and that gives up after one attempt: FAILED through the real path.
    impatient = start_tagging_board(
        processes, running_torchserve, url, tmp_path / "impatient", timeout_s=0.001, max_attempts=1,
        extra=AUTH_ON,
    )  # fmt: skip
    member = sign_up(impatient.target, "Ada")
    try:
        post = member.client.create_post(0, "retry", "a failure, then a retry")
        added = member.client.add_attachment(post.id, "slow.png", png_bytes())
        token = str(member.client.token)
    finally:
        member.client.close()
    env = {"BOARD_TOKEN": token}
    watched = make_cli(impatient.target, tmp_path / "config", monkeypatch, capsys)(
        "attachments", "watch", added.id, env=env
    )
    assert watched.code == 1  # watching ended, but not TAGGED
    assert f"#{added.id} slow.png: FAILED: gave up after 1 attempts; last error: timeout: " in watched.out

    # The same database behind a board with the usual patience: the retry is tagged.
    processes.stop(impatient.proc)
    board = start_tagging_board(processes, running_torchserve, url, tmp_path / "patient", extra=AUTH_ON)
    cli = make_cli(board.target, tmp_path / "config", monkeypatch, capsys)
    retried = cli("attachments", "retry", added.id, "--wait", env=env)
    assert retried.code == 0, retried.both
    assert f"#{added.id} slow.png: PENDING" in retried.out
    assert f"#{added.id} slow.png: TAGGED: " in retried.out

    lines = cli("--json", "attachments", "watch", added.id, env=env).out.splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["ATTACHMENT_STATUS_TAGGED"]  # JSON Lines


def test_watch_gives_up_after_its_timeout_and_says_why(
    cli: Cli, logged_in: Member, running_torchserve: TorchServe
) -> None:
    post = logged_in.client.create_post(0, "slow", "the model server is down")
    with running_torchserve.frozen():  # the board keeps the work PENDING until TorchServe answers
        added = logged_in.client.add_attachment(post.id, "slow.png", png_bytes())
        ran = cli("attachments", "watch", added.id, "--timeout", "1")
    assert ran.code == 1
    assert f"#{added.id} slow.png: PENDING" in ran.out
    assert f"attachment {added.id} still PENDING after 1 s" in ran.err
    assert logged_in.client.wait_for_tagging(added.id, timeout=60).status == TAGGED


def test_attachments_list_pages(cli: Cli, logged_in: Member) -> None:
    post = logged_in.client.create_post(0, "pages", "three photos")
    ids = [logged_in.client.add_attachment(post.id, f"p{i}.png", png_bytes()).id for i in range(3)]
    first = cli("--json", "attachments", "list", "--post", post.id, "--page-size", "2")
    page = json.loads(first.out)
    assert [int(a["id"]) for a in page["attachments"]] == ids[:2] and page["next_page_token"]
    human = cli("attachments", "list", "--post", post.id, "--page-size", "2")
    assert f"next page: --page-token {page['next_page_token']}" in human.out
    rest = json.loads(
        cli("--json", "attachments", "list", "--post", post.id, "--page-token", page["next_page_token"]).out
    )
    assert [int(a["id"]) for a in rest["attachments"]] == ids[2:] and rest["next_page_token"] == ""
    every = json.loads(
        cli("--json", "attachments", "list", "--post", post.id, "--page-size", "2", "--all").out
    )
    assert [int(a["id"]) for a in every["attachments"]] == ids


def test_attachments_preview_saves_a_small_jpeg_or_webp(
    cli: Cli, logged_in: Member, running_torchserve: TorchServe, tmp_path: Path
) -> None:
    _, attachment_id = tagged_photo(logged_in, "preview", "big.png", (200, 100))
    out = tmp_path / "out.jpg"
    ran = cli("attachments", "preview", attachment_id, "-o", out, "--max-size", "50")
    assert ran.code == 0, ran.both
    with Image.open(out) as image:
        assert image.format == "JPEG" and image.size == (50, 25)
    assert f"saved a 50x25 image/jpeg preview of attachment {attachment_id}" in ran.out
    webp = tmp_path / "overlay.webp"
    as_json = cli("--json", "attachments", "preview", attachment_id, "-o", webp, "--overlay", "--webp")
    assert as_json.code == 0, as_json.both
    saved = json.loads(as_json.out)
    assert saved["content_type"] == "image/webp" and saved["bytes"] == webp.stat().st_size
    with Image.open(webp) as image:
        assert image.format == "WEBP" and max(image.size) <= 512


def test_posts_list_filter_and_order_by_reach_the_server(
    cli: Cli, logged_in: Member, board: RunningServer
) -> None:
    other = sign_up(board.target, "Other")
    try:
        other.client.create_post(0, "not mine", "another author")
    finally:
        other.client.close()
    mine = [logged_in.client.create_post(0, f"mine {i}", "for the filter").id for i in range(3)]
    ran = cli(
        "--json",
        "posts",
        "list",
        "--filter",
        f"user_id = {logged_in.id}",
        "--order-by",
        "create_time desc",
        "--all",
    )
    assert ran.code == 0, ran.both
    posts = json.loads(ran.out)["posts"]
    # Only this user's posts (the filter reached the server), newest first (so did order_by).
    assert {p["user_id"] for p in posts} == {str(logged_in.id)}
    assert [int(p["id"]) for p in posts] == sorted(mine, reverse=True)
    bad = cli("posts", "list", "--filter", "label.dog >=")
    assert bad.code == 1 and "error: INVALID_ARGUMENT" in bad.err


def test_posts_list_with_attachments_shows_labels_and_model(
    cli: Cli, logged_in: Member, running_torchserve: TorchServe
) -> None:
    post_id, attachment_id = tagged_photo(logged_in, "with photos", "dog.png")
    args = ("posts", "list", "--user", logged_in.id, "--with-attachments", "--all")
    as_json = cli("--json", *args)
    assert as_json.code == 0, as_json.both
    listed = next(p for p in json.loads(as_json.out)["posts"] if int(p["id"]) == post_id)
    assert "attachments" in listed, listed  # view=POST_VIEW_WITH_ATTACHMENTS reached the server
    attachment = logged_in.client.get_attachment(attachment_id)
    assert [x["name"] for x in listed["attachments"][0]["labels"]] == [x.name for x in attachment.labels]
    human = cli(*args)
    model = f"({shown_model(running_torchserve)})"
    assert f"#{attachment_id} dog.png TAGGED: {shown_labels(attachment)} {model}" in human.out


def test_post_attachments_text_names_each_attachment_labels_and_model() -> None:
    post = board_pb2.Post(
        id=3,
        attachments=[
            board_pb2.Attachment(
                id=7,
                filename="[b]dog\x1b[0m.jpg",
                status=TAGGED,
                labels=[
                    board_pb2.Label(name="dog", fraction=0.31),
                    board_pb2.Label(name="person", fraction=0.052),
                ],
                model=board_pb2.ModelProvenance(
                    arch="deeplabv3_resnet101",
                    weights="COCO_WITH_VOC_LABELS_V1",
                    archive_sha256="0123456789abcdef",
                ),
                create_time=timestamp_pb2.Timestamp(seconds=1),
            ),
            board_pb2.Attachment(
                id=8, filename="new.png", status=board_pb2.ATTACHMENT_STATUS_PENDING, retag_pending=False
            ),
        ],
    )
    buffer = io.StringIO()
    Console(file=buffer, width=300).print(post_attachments_text(post))
    assert buffer.getvalue().splitlines() == [
        "#7 [b]dog\\x1b[0m.jpg TAGGED: dog 31.0%, person 5.2% "
        "(deeplabv3_resnet101@0123456789ab [COCO_WITH_VOC_LABELS_V1])",
        "#8 new.png PENDING",
    ]


def test_demo_signs_up_tags_searches_and_signs_out(
    cli: Cli, running_torchserve: TorchServe, tmp_path: Path
) -> None:
    ran = cli("--json", "demo", "--limit", "2")
    assert ran.code == 0, ran.both
    result = json.loads(ran.out)
    assert {a["status"] for a in result["attachments"]} == {"ATTACHMENT_STATUS_TAGGED"}
    # The demo searches for each label it got but background (and those under 1%).
    labels = [x for a in result["attachments"] for x in a["labels"]]
    found = {x["name"] for x in labels if x["fraction"] >= 0.01 and x["name"] != "background"}
    assert found, f"the model found only background: {labels}"
    assert set(result["posts_by_label"]) == found
    for posts in result["posts_by_label"].values():
        assert result["post_id"] in [int(p) for p in posts]
    assert "signed up and signed in as Demo" in ran.err
    assert "signed out of the demo account" in ran.err
    assert not (tmp_path / "config" / "board" / "token").exists()  # the demo's session is not kept


def test_demo_runs_as_the_signed_in_user(cli: Cli, logged_in: Member, running_torchserve: TorchServe) -> None:
    ran = cli("--json", "demo", "--limit", "1")
    assert ran.code == 0, ran.both
    assert json.loads(ran.out)["user_id"] == logged_in.id
    assert "signed up" not in ran.err
    assert cli("whoami").code == 0  # still signed in: the demo signs out only what it signed in


def test_retag_is_for_admins_and_queues_what_the_filter_selects(
    cli: Cli, logged_in: Member, board: RunningServer, running_torchserve: TorchServe
) -> None:
    post_id, attachment_id = tagged_photo(logged_in, "retag", "r.png")
    refused = cli("attachments", "retag", "--filter", f"post_id = {post_id}")
    assert refused.code == 1 and "error: PERMISSION_DENIED" in refused.err

    granted = subprocess.run(
        [str(BOARD_SERVER), "admin", "grant", logged_in.email, "--database-url", board.database_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert granted.returncode == 0, granted.stderr
    queued = cli("attachments", "retag", "--filter", f"post_id = {post_id}")
    assert queued.code == 0, queued.both
    assert f"queued 1 attachment(s) for tagging with {shown_model(running_torchserve)}" in queued.out
    watched = cli("attachments", "watch", attachment_id)  # the re-tag lands; the stream ends once it has
    assert watched.code == 0, watched.both
    assert f"#{attachment_id} r.png: TAGGED" in watched.out
    as_json = cli("--json", "attachments", "retag", "--filter", f'post_id = {post_id} AND status = "FAILED"')
    assert json.loads(as_json.out)["model"]["arch"] == running_torchserve.archive_metadata["arch"]
