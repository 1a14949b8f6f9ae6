"""Clients print, never interpret: server text reaches the terminal to the letter, controls made visible.

Against a real board server (auth on) whose users wrote hostile titles, names, contents, comments and
filenames; whose labels come from a real TorchServe serving an archive (training.export
--class-names-file) whose class names are hostile; and whose failure reasons carry hostile text that
TorchServe itself wrote back. Plus the error path and `segment` against the same TorchServe.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import cast

import grpc
import pytest
from PIL import Image
from rich.console import Console
from sqlalchemy import Table, update

from board_server.storage.tables import Attachment
from clients.board import BoardClientError, FieldViolation
from clients.cli import _print_error
from clients.console_text import Output, literal, plain_console, visible
from clients.gen.board.v1 import board_pb2
from clients.segment import ClassShare, Segmentation
from clients.segment_cli import class_table
from clients.segment_cli import main as segment_main
from tests.board.conftest import Member, RunningServer, database_engine, sign_up, start_board_server
from tests.clients.conftest import AUTH_ON, Cli, make_cli
from tests.support import Processes
from tests.torchserve_fixtures import (
    TorchServe,
    export_test_archive,
    running,
    start_tagging_board,
    torchserve_for,
)

# Each hostile text and what the terminal must show for it.
HOSTILE = {
    "[/x]": "[/x]",
    "[bold red]x[/]": "[bold red]x[/]",
    "[link=https://evil.example]click[/link]": "[link=https://evil.example]click[/link]",
    ":smile: :thumbs_up:": ":smile: :thumbs_up:",
    "\x1b[31mred\x1b[0m": "\\x1b[31mred\\x1b[0m",
    "bell\x07 title\x1b]0;pwned\x07": "bell\\x07 title\\x1b]0;pwned\\x07",
    "ok\rEVIL": "ok\\x0dEVIL",
    "csi\x9b31m": "csi\\x9b31m",
    "🐕‍🦺 dog 👍🏽": "🐕‍🦺 dog 👍🏽",
    "שלום עולם مرحبا": "שלום עולם مرحبا",
}
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\x9b")
TAGGED = board_pb2.ATTACHMENT_STATUS_TAGGED
FAILED = board_pb2.ATTACHMENT_STATUS_FAILED

# A label is at most 100 characters (the board's column), and a model with random weights finds the same
# class everywhere, whichever it is. So every class of the hostile archive is named with every kind of hostile
# text at once (markup, emoji codes, CSI and OSC escapes, BEL, CR, C1 CSI, ZWJ emoji, right-to-left scripts),
# in shorter forms than HOSTILE's, and whichever class the model finds shows them all.
LABEL_PARTS = {
    "[/x]": "[/x]",
    "[bold]x[/]": "[bold]x[/]",
    ":smile:": ":smile:",
    "\x1b[31mred\x1b[0m": "\\x1b[31mred\\x1b[0m",
    "\x1b]0;pwned\x07": "\\x1b]0;pwned\\x07",
    "ok\rEVIL": "ok\\x0dEVIL",
    "csi\x9b31m": "csi\\x9b31m",
    "🐕‍🦺👍🏽": "🐕‍🦺👍🏽",
    "שלום مرحبا": "שלום مرحبا",
}
HOSTILE_CLASSES = [f"{' '.join(LABEL_PARTS)} {index}" for index in range(3)]
# A model name TorchServe does not serve: its error answer names it ("Model not found: NAME"), hostile text
# and all.
ATTACHMENTS = cast(Table, Attachment.__table__)
HOSTILE_MODEL = "[bold]no[/] \x1b[31mway\x1b[0m :smile:"
HOSTILE_MODEL_SHOWN = "Model not found: [bold]no[/] \\x1b[31mway\\x1b[0m :smile:"
HOSTILE_MODEL_SHOWN_RAW = f"Model not found: {HOSTILE_MODEL}"


def png(size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def assert_shown(output: str, texts: Mapping[str, str] = HOSTILE) -> None:
    """Each of ``texts`` (raw → as shown) appears as shown in ``output``, and no raw control does."""
    for raw, shown in texts.items():
        assert shown in output, (raw, output)
    for control in RAW_CONTROLS:
        assert control not in output


@pytest.fixture(scope="module")
def hostile_torchserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """A TorchServe of its own (free ports, its own worker socket) serving an archive from training.export
    whose classes are HOSTILE_CLASSES; the session TorchServe runs on undisturbed."""
    folder = tmp_path_factory.mktemp("hostile_model")
    names = folder / "classes.json"
    names.write_text(json.dumps(HOSTILE_CLASSES), encoding="utf-8")
    store = export_test_archive(folder / "store", "--class-names-file", str(names), "--no-program")
    hostile = torchserve_for(store, folder / "runtime")
    assert hostile.archive_metadata["class_names"] == HOSTILE_CLASSES
    with running(hostile):
        yield hostile


# --- the rendering functions -------------------------------------------------------------------------


def test_visible_escapes_controls_but_keeps_newlines_tabs_and_every_script() -> None:
    for raw, shown in HOSTILE.items():
        assert visible(raw) == shown
    assert visible("two\nlines\tand a tab") == "two\nlines\tand a tab"
    assert visible("nul\x00 del\x7f") == "nul\\x00 del\\x7f"


def test_literal_text_prints_to_the_letter_even_on_a_colour_terminal() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="truecolor", width=200)
    for raw in HOSTILE:
        console.print(literal(raw))
    printed = buffer.getvalue()
    # On a terminal rich adds escapes of its own (reverse video for \xNN); the server's never pass raw.
    assert "\x1b[31mred" not in printed
    assert "\x1b]0;" not in printed
    assert "\x07" not in printed and "\r" not in printed and "\x9b" not in printed
    assert "[/x]" in printed and ":smile:" in printed and "שלום עולם" in printed


def test_errors_are_shown_literally(capsys: pytest.CaptureFixture[str]) -> None:
    error = BoardClientError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad [bold]x[/] \x1b[31m",
        [FieldViolation("title", "is ':smile:' \x1b[2J [/x]")],
    )
    _print_error(error, "", Output(json=False))
    err = capsys.readouterr().err
    assert "error: INVALID_ARGUMENT: bad [bold]x[/] \\x1b[31m" in err
    assert "  title: is ':smile:' \\x1b[2J [/x]" in err
    assert "\x1b" not in err
    _print_error(error, "", Output(json=True))
    assert json.loads(capsys.readouterr().err)["error"]["message"] == "bad [bold]x[/] \x1b[31m"


def test_segment_class_table_shows_names_and_file_literally() -> None:
    result = Segmentation(
        4,
        3,
        [ClassShare(0, raw, 1, 0.1) for raw in HOSTILE],
        b"",
        {"arch": "[bold]arch\x1b[31m", "untrained": True},
    )
    buffer = io.StringIO()
    console = plain_console()
    console.file = buffer
    console.width = 250
    console.print(class_table(result, "[/x]\x1b[2J.png"))
    printed = buffer.getvalue()
    assert_shown(printed)
    assert "[/x]\\x1b[2J.png  (4x3, [bold]arch\\x1b[31m, UNTRAINED)" in printed


# --- against a real board server ----------------------------------------------------------------------


def test_posts_titles_and_contents_are_shown_literally(cli: Cli, member: Member) -> None:
    ids = [member.client.create_post(0, raw, f"body {raw}").id for raw in HOSTILE]
    listed = cli("posts", "list", "--user", member.id, "--all")
    assert listed.code == 0, listed.both
    assert_shown(listed.out)
    for shown in HOSTILE.values():
        assert f"body {shown}" in listed.out
    for post_id, (raw, shown) in zip(ids, HOSTILE.items(), strict=True):
        got = cli("posts", "get", post_id)
        assert got.code == 0, got.both
        assert shown in got.out and f"body {shown}" in got.out
        as_json = cli("--json", "posts", "get", post_id)
        assert json.loads(as_json.out)["title"] == raw  # JSON carries the exact text, escaped by JSON itself
        assert "\x1b" not in as_json.out


def test_markup_in_a_title_no_longer_crashes_posts_list(cli: Cli, member: Member) -> None:
    member.client.create_post(0, "[/x]", "the title of issue 9")
    listed = cli("posts", "list", "--user", member.id)
    assert listed.code == 0, listed.err
    assert "[/x]" in listed.out
    assert "MarkupError" not in listed.both


def test_user_names_and_comments_are_shown_literally(board: RunningServer, cli: Cli, member: Member) -> None:
    post = member.client.create_post(0, "comments", "on hostile text")
    for raw in HOSTILE:
        member.client.create_comment(post.id, 0, raw)
    comments = cli("comments", "list", "--post", post.id)
    assert comments.code == 0, comments.both
    assert_shown(comments.out)
    for raw, shown in HOSTILE.items():
        named = sign_up(board.target, raw)
        try:
            got = cli("users", "get", named.id)
            assert got.code == 0, got.both
            assert shown in got.out
            assert not any(control in got.out for control in RAW_CONTROLS)
        finally:
            named.client.close()


@pytest.mark.slow
def test_filenames_and_labels_are_shown_literally(
    hostile_torchserve: TorchServe,
    processes: Processes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    board = start_tagging_board(
        processes, hostile_torchserve, f"sqlite:///{tmp_path / 'labels.db'}", tmp_path, extra=AUTH_ON
    )
    cli = make_cli(board.target, tmp_path / "config", monkeypatch, capsys)
    member = sign_up(board.target, "Ada")
    try:
        post = member.client.create_post(0, "photos", "hostile names")
        added = [member.client.add_attachment(post.id, raw, png()) for raw in HOSTILE]
        tagged = [member.client.wait_for_tagging(a.id, timeout=60) for a in added]
    finally:
        member.client.close()
    assert {a.status for a in tagged} == {TAGGED}
    assert all(a.labels and {x.name for x in a.labels} <= set(HOSTILE_CLASSES) for a in tagged)
    listed = cli("attachments", "list", "--post", post.id, "--all")
    assert listed.code == 0, listed.both
    assert_shown(listed.out)  # the filenames
    assert_shown(listed.out, LABEL_PARTS)
    got = cli("attachments", "get", tagged[0].id)
    assert got.code == 0, got.both
    assert_shown(got.out, LABEL_PARTS)  # every label of one attachment
    for label in tagged[0].labels:
        assert visible(label.name) in got.out


def test_failure_reasons_are_shown_literally(
    processes: Processes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The reason is server text like any other (a model server's error, echoing what it was sent): it is
    # written into the database here, as another replica's tagging worker would store it, because a real
    # TorchServe answers a misnamed model by pausing tagging, not by failing the upload.
    url = f"sqlite:///{tmp_path / 'failed.db'}"
    board = start_board_server(processes, url, tmp_path, extra=AUTH_ON)
    cli = make_cli(board.target, tmp_path / "config", monkeypatch, capsys)
    member = sign_up(board.target, "Ada")
    try:
        post = member.client.create_post(0, "photos", "a hostile failure")
        failed = member.client.add_attachment(post.id, "[/x].png", png())
        with database_engine(url) as engine, engine.begin() as conn:
            conn.execute(
                update(ATTACHMENTS)
                .where(ATTACHMENTS.c.id == failed.id)
                .values(
                    status="FAILED", failure_reason=f"model server error INTERNAL: {HOSTILE_MODEL_SHOWN_RAW}"
                )
            )
        assert member.client.get_attachment(failed.id).status == FAILED
    finally:
        member.client.close()
    watched = cli("attachments", "watch", failed.id)
    assert watched.code == 1  # it ended FAILED
    assert "[/x].png: FAILED" in watched.out
    assert HOSTILE_MODEL_SHOWN in watched.out
    assert "\x1b" not in watched.out


def test_server_error_text_is_shown_literally(cli: Cli, logged_in: Member, tmp_path: Path) -> None:
    post = logged_in.client.create_post(0, "errors", "content type mismatch")
    photo = tmp_path / "photo.png"
    photo.write_bytes(png())
    refused = cli("attach", post.id, photo, "--content-type", "image/jpeg[bold]\x1b[31m")
    assert refused.code == 1
    assert "INVALID_ARGUMENT" in refused.err
    assert "image/jpeg[bold]\\x1b[31m" in refused.err
    assert "\x1b" not in refused.err


@pytest.mark.slow
@pytest.mark.integration  # through hostile_torchserve
def test_segment_cli_prints_model_text_literally(
    hostile_torchserve: TorchServe,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "[bold]a\x1b[31m.png").write_bytes(png())
    (photos / "b.png").write_bytes(png())
    settings = hostile_torchserve.settings
    args = [
        "--grpc",
        f"--grpc-port={settings.grpc_inference_port}",
        f"--key-file={settings.inference_key_file}",
    ]
    assert segment_main([str(photos), *args, "--out", str(tmp_path / "masks")]) == 0
    printed = capsys.readouterr().out
    assert_shown(printed, LABEL_PARTS)
    assert "[bold]a\\x1b[31m.png" in printed

    # TorchServe's answer for a model it does not serve names the model asked for.
    out = str(tmp_path / "b.mask.png")
    assert segment_main([str(photos / "b.png"), *args, "--model", HOSTILE_MODEL, "--out", out]) == 1
    printed = capsys.readouterr().out
    assert HOSTILE_MODEL_SHOWN in printed
    assert "\x1b" not in printed
