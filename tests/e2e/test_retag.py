"""Re-tagging end to end with two real archives: the same network exported twice with random weights of
different seeds (so two different archive SHA-256s), served in turn by one TorchServe on the same ports.

The story, on one SQLite board database:

1. TorchServe serves archive A; a tagging board tags ten photos (one per post). Every label set records A's
   archive SHA-256, in GetAttachment and in ListPosts' view with attachments.
2. TorchServe is restarted on archive B. An admin's RetagAttachments(``post_id = P``) re-tags that post's
   photo on the live board (a member's call is PERMISSION_DENIED, a bad filter INVALID_ARGUMENT).
3. The board stops; ``board-server retag`` (the operator's CLI, wired to TorchServe like the board) queues
   the nine stale photos. Two photos are uploaded through a board without a tagging worker: new uploads
   made while the re-tag is queued.
4. A tagging board with one worker thread starts on the database. It tags the two new uploads before any
   photo of the re-tag backlog (compared by the time each landed: one worker takes one thing at a time, so
   the order is exact); two more uploads made while it works wait behind at most the re-tags already in
   hand. Meanwhile a search (ListPosts with a label filter, two posts a page, with attachments) pages
   through again and again: no pass returns a post twice, none loses a post that matches under both
   models, and no photo is ever seen with a mix of the two models' labels (nor does any snapshot of the
   tables show one): the new labels replace the old ones in one transaction.
5. Every photo ends TAGGED by B with exactly the labels TorchServe B gives for it (asked directly, before).
"""

from __future__ import annotations

import io
import random
import re
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import combinations
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from clients.board import BoardClient, InvalidArgumentError, PermissionDeniedError
from clients.gen.board.v1 import board_pb2
from clients.segment import SegmentClient, ServingEndpoints, TokenSource
from seg_handler.launcher import archive_metadata
from tests.board.conftest import BOARD_SERVER, RunningServer, start_board_server
from tests.e2e.conftest import TorchServe, tagging_flags
from tests.support import Processes, wait_for
from tests.torchserve_fixtures import export_test_archive

SEED_B = 7  # the session archive (A) is exported with training.export's default seed, 0
PRESENT = 0.01  # what a bare label.X means (board_server.query.filter.DEFAULT_MIN_LABEL_FRACTION)
TAGGED = board_pb2.ATTACHMENT_STATUS_TAGGED

Labels = dict[str, float]


def picture(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    """A JPEG of random blocks and ellipses over noise: different images give the models different masks."""
    rng = random.Random(seed)
    noise = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    image = Image.blend(Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3))), noise, 0.3)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        box = (x, y, x + rng.randrange(10, 60), y + rng.randrange(10, 50))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def store_b(e2e_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Archive B: the session archive's network and input size, random weights of another seed."""
    return export_test_archive(
        tmp_path_factory.mktemp("retag_model_store_b"), "--seed", str(SEED_B), "--no-program"
    )


def archive_sha256(store: Path) -> str:
    return str(archive_metadata(store / "deeplabv3.mar")["archive_sha256"])


@dataclass
class TwoModels:
    """The session TorchServe (archive A) and one on archive B with the same ports, runtime folder and key
    files (stopped at first); one of them runs at a time."""

    a: TorchServe
    b: TorchServe
    sha_a: str
    sha_b: str

    def switch_to_b(self) -> None:
        self.a.stop()
        self.b.start()


@pytest.fixture
def models(torchserve: TorchServe, e2e_model_store: Path, store_b: Path) -> Iterator[TwoModels]:
    """Both archives (different SHA-256s); the session TorchServe is running on A again afterwards."""
    serve_b = TorchServe(replace(torchserve.settings, model_store=store_b))
    two = TwoModels(torchserve, serve_b, archive_sha256(e2e_model_store), archive_sha256(store_b))
    assert two.sha_a != two.sha_b
    try:
        yield two
    finally:
        serve_b.stop()
        torchserve.start()


def segment_client(serve: TorchServe) -> SegmentClient:
    settings = serve.settings
    endpoints = ServingEndpoints(
        inference_url=settings.inference_url,
        management_url=settings.management_url,
        grpc_inference_target=settings.grpc_inference_target,
        model_name=settings.model_name,
    )
    return SegmentClient(endpoints, TokenSource.from_key_file(settings.key_file), timeout_s=60)


def labels_of(attachment: board_pb2.Attachment) -> Labels:
    return {x.name: x.fraction for x in attachment.labels}


def matches(labels: Labels | None, classes: tuple[str, ...]) -> bool:
    return labels is not None and any(labels.get(name, 0.0) >= PRESENT for name in classes)


def search_classes(before: dict[int, Labels], after: dict[int, Labels]) -> tuple[str, ...]:
    """The label filter (one class, or two ORed) that some posts match under both models, preferring one
    that other posts match under one model only (they come and go while the search pages). Random weights
    tend to give every pixel of every image one class, a different one per model: then it is ``label.<A's>
    OR label.<B's>``, which every post matches throughout, if its labels are never seen half replaced."""
    names = sorted({n for labels in (*before.values(), *after.values()) for n in labels})
    candidates = [(n,) for n in names] + list(combinations(names, 2))

    def score(classes: tuple[str, ...]) -> tuple[bool, bool, int, int]:
        a = {i for i, labels in before.items() if matches(labels, classes)}
        b = {i for i, labels in after.items() if matches(labels, classes)}
        return (bool(a & b), bool(a ^ b), min(len(a & b), len(a ^ b)), len(a & b))

    return max(candidates, key=score)


# --- reading the database the board writes ------------------------------------------------------------------


def connect(database: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)


def unsettled(database: Path) -> int:
    """Attachments still waiting: PENDING uploads and queued re-tags."""
    with connect(database) as conn:
        row = conn.execute(
            "SELECT count(*) FROM attachments WHERE status = 'PENDING' OR retag_pending"
        ).fetchone()
    return int(row[0])


def labelled_by(database: Path) -> dict[int, tuple[str | None, Labels]]:
    """Every attachment's model SHA-256 and labels, read in ONE statement (one snapshot)."""
    with connect(database) as conn:
        rows = conn.execute(
            "SELECT a.id, a.model_archive_sha256, l.name, l.fraction FROM attachments a "
            "LEFT JOIN attachment_labels l ON l.attachment_id = a.id"
        ).fetchall()
    found: dict[int, tuple[str | None, Labels]] = {}
    for attachment_id, sha, name, fraction in rows:
        found.setdefault(attachment_id, (sha, {}))
        if name is not None:
            found[attachment_id][1][name] = fraction
    return found


def landed(database: Path, ids: list[int]) -> dict[int, datetime]:
    """When each attachment last changed (for a TAGGED one: when its labels landed)."""
    with connect(database) as conn:
        rows = conn.execute(
            f"SELECT id, update_time FROM attachments WHERE id IN ({','.join('?' * len(ids))})", ids
        ).fetchall()
    return {int(i): datetime.fromisoformat(str(t)) for i, t in rows}


# --- the search that runs during the re-tag -----------------------------------------------------------------


@dataclass
class SearchPass:
    posts: list[int]
    seen: list[tuple[int, str, Labels]]  # each photo on the pages: id, model SHA-256, labels
    snapshot: dict[int, tuple[str | None, Labels]]
    unsettled_before: int
    unsettled_after: int


class Searcher(threading.Thread):
    """Pages through ListPosts(filter, page_size 2, with attachments) again and again until stopped."""

    def __init__(self, target: str, filter_text: str, database: Path) -> None:
        super().__init__(name="retag-search", daemon=True)
        self.target, self.filter_text, self.database = target, filter_text, database
        self.passes: list[SearchPass] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with BoardClient(self.target, timeout=30) as client:
                while not self.stop.is_set():
                    self.passes.append(self.one_pass(client))
                self.passes.append(self.one_pass(client))  # and one after everything settled
        except BaseException as exc:
            self.error = exc

    def one_pass(self, client: BoardClient) -> SearchPass:
        before = unsettled(self.database)
        posts: list[int] = []
        seen: list[tuple[int, str, Labels]] = []
        for post in client.iter_posts(page_size=2, filter=self.filter_text, with_attachments=True):
            posts.append(post.id)
            seen += [(a.id, a.model.archive_sha256, labels_of(a)) for a in post.attachments]
        snapshot = labelled_by(self.database)
        return SearchPass(posts, seen, snapshot, before, unsettled(self.database))


def run_cli_retag(serve: TorchServe, database_url: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``board-server retag``, wired to TorchServe as the board is (target and inference key file)."""
    command = [
        str(BOARD_SERVER), "retag", "--database-url", database_url,
        "--segmentation-target", serve.grpc_target,
        "--segmentation-token-file", str(serve.settings.inference_key_file),
        "--audit-log", str(workdir / "retag-audit.log"),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=workdir)


def tagging_board(processes: Processes, serve: TorchServe, url: str, workdir: Path) -> RunningServer:
    """A board with ONE tagging thread (flags after the fixture's win): it takes one thing at a time."""
    return start_board_server(
        processes, url, workdir, extra=(*tagging_flags(serve), "--tagging-workers", "1")
    )


@dataclass
class Photos:
    """What the test uploaded: bytes and post of each attachment, and each model's labels for it."""

    images: dict[int, bytes]
    posts: dict[int, int]
    before: dict[int, Labels]  # model A's labels (as the board stored them)
    after: dict[int, Labels]  # model B's labels (asked of TorchServe B directly)

    def add(self, client: BoardClient, user_id: int, seed: int) -> int:
        post_id = client.create_post(user_id, f"photo {seed}", "tagged by two models").id
        data = picture(seed)
        attachment_id = client.add_attachment(post_id, f"{seed}.jpg", data).id
        self.images[attachment_id], self.posts[attachment_id] = data, post_id
        return attachment_id

    def ask_b(self, serve: TorchServe) -> None:
        with segment_client(serve) as direct:
            for attachment_id, data in self.images.items():
                self.after[attachment_id] = {c.name: c.fraction for c in direct.segment(data).classes}

    def matching(self, labels_by_photo: dict[int, Labels], classes: tuple[str, ...]) -> set[int]:
        return {self.posts[i] for i, labels in labels_by_photo.items() if matches(labels, classes)}


def check_search(
    passes: list[SearchPass], photos: Photos, classes: tuple[str, ...], models: TwoModels
) -> None:
    """No pass returns a post twice or loses one that matches under both models; every photo on a page and
    in a snapshot of the tables carries exactly one model's whole label set."""
    matched_before, matched_after = (
        photos.matching(photos.before, classes),
        photos.matching(photos.after, classes),
    )
    steady = matched_before & matched_after
    assert steady, f"no post matches {classes} under both models: the search is untested"
    known = {models.sha_a: photos.before, models.sha_b: photos.after}
    for number, search in enumerate(passes):
        assert len(search.posts) == len(set(search.posts)), f"pass {number} repeated a post: {search.posts}"
        assert steady <= set(search.posts), f"pass {number} lost {sorted(steady - set(search.posts))}"
        assert set(search.posts) <= matched_before | matched_after, f"pass {number}: {search.posts}"
        for attachment_id, shown_sha, labels in search.seen:
            wanted = known[shown_sha][attachment_id] if shown_sha else {}
            assert labels == pytest.approx(wanted), (number, attachment_id, shown_sha)
        for attachment_id, (stored_sha, labels) in search.snapshot.items():
            wanted = known[stored_sha][attachment_id] if stored_sha else {}
            assert labels == pytest.approx(wanted), (number, attachment_id, stored_sha)
    moving = sum(search.unsettled_before != search.unsettled_after for search in passes)
    assert moving, f"none of {len(passes)} search passes overlapped the re-tag"


def check_new_uploads_went_first(
    database: Path, backlog: list[int], early: list[int], late: list[int]
) -> None:
    """The uploads made before the worker started landed before any photo of the backlog; each one made
    while it worked waited behind at most the re-tag in hand (and one claimed while the upload committed)."""
    times = landed(database, [*backlog, *early, *late])
    assert max(times[i] for i in early) < min(times[i] for i in backlog)
    with connect(database) as conn:
        for upload in late:
            (created,) = conn.execute("SELECT create_time FROM attachments WHERE id = ?", [upload]).fetchone()
            overtaking = [i for i in backlog if datetime.fromisoformat(created) < times[i] < times[upload]]
            assert len(overtaking) <= 2, f"upload {upload} waited behind re-tags {overtaking}"


def test_a_new_model_retags_everything_after_new_uploads_while_search_stays_consistent(
    models: TwoModels, processes: Processes, tmp_path: Path
) -> None:
    database = tmp_path / "board.db"
    url = f"sqlite:///{database}"
    photos = Photos({}, {}, {}, {})

    # 1. Archive A tags ten photos, one per post.
    models.a.start()
    board = tagging_board(processes, models.a, url, tmp_path)
    admin, uploader = board.make_admin("Admin"), board.sign_up("Uploader")
    for seed in range(10):
        photos.add(uploader.client, uploader.id, seed)
    for attachment_id in photos.images:
        tagged = uploader.client.wait_for_tagging(attachment_id, timeout=120)
        assert tagged.status == TAGGED, tagged.failure_reason
        assert (tagged.model.archive_sha256, tagged.model.untrained) == (models.sha_a, True)
        photos.before[attachment_id] = labels_of(tagged)
    full_view = list(uploader.client.iter_posts(uploader.id, with_attachments=True))
    shown = {a.id: a.model.archive_sha256 for p in full_view for a in p.attachments}
    assert shown == dict.fromkeys(photos.images, models.sha_a)

    # 2. TorchServe restarts on archive B (same ports, same key file path); B's labels for each photo. An
    # admin re-tags one post through the RPC on the live board.
    models.switch_to_b()
    photos.ask_b(models.b)
    first = next(iter(photos.images))
    with pytest.raises(PermissionDeniedError):
        uploader.client.retag_attachments(f"post_id = {photos.posts[first]}")
    with pytest.raises(InvalidArgumentError) as caught:
        admin.client.retag_attachments("stale AND")
    assert caught.value.violations[0].field == "filter"
    assert caught.value.violations[0].description.startswith("column 10: expected a field name")
    answer = admin.client.retag_attachments(f"post_id = {photos.posts[first]}")
    assert answer.queued_count == 1
    assert (answer.model.archive_sha256, answer.model.arch) == (models.sha_b, "deeplabv3_mobilenet_v3_large")
    retagged = uploader.client.wait_for_tagging(first, timeout=120)
    assert (retagged.status, retagged.model.archive_sha256) == (TAGGED, models.sha_b)
    assert labels_of(retagged) == pytest.approx(photos.after[first])
    Processes.stop(board.proc)

    # 3. The operator's CLI queues the other nine; two uploads arrive while no worker runs.
    done = run_cli_retag(models.b, url, tmp_path)
    assert done.returncode == 0, done.stderr
    queued = rf"queued 9 attachment\(s\) for re-tagging with \S+ \(archive sha256 {models.sha_b}\)"
    assert re.search(queued, done.stderr), done.stderr
    assert "Re-tag queued; count=9; filter=stale;" in (tmp_path / "retag-audit.log").read_text()
    backlog = [i for i in photos.images if i != first]
    reader = start_board_server(processes, url, tmp_path)  # no segmentation target: no tagging worker
    # Sessions live in the database: the same access tokens work on every board.
    on_reader = reader.client(token=uploader.client.token)
    early = [photos.add(on_reader, uploader.id, 100 + n) for n in range(2)]

    # 4. A tagging board (one worker thread) works through it all while the search pages on the reader.
    classes = search_classes(photos.before, photos.after)
    searcher = Searcher(reader.target, " OR ".join(f"label.{c}" for c in classes), database)
    searcher.start()
    worker = tagging_board(processes, models.b, url, tmp_path)
    with worker.client(token=uploader.client.token) as on_worker:
        late = [photos.add(on_worker, uploader.id, 200 + n) for n in range(2)]
    try:
        wait_for(
            "every upload and re-tag to land", lambda: unsettled(database) == 0, timeout=300, interval=0.5
        )
    finally:
        searcher.stop.set()
        searcher.join(timeout=120)
    assert searcher.error is None, repr(searcher.error)
    photos.ask_b(models.b)  # now for the new uploads too
    check_new_uploads_went_first(database, backlog, early, late)
    check_search(searcher.passes, photos, classes, models)

    # 5. Everything ends TAGGED by B with B's labels, in the full view of ListPosts too.
    final = [a for p in on_reader.iter_posts(uploader.id, with_attachments=True) for a in p.attachments]
    assert sorted(a.id for a in final) == sorted(photos.images)
    for attachment in final:
        assert (attachment.status, attachment.retag_pending) == (TAGGED, False), attachment.failure_reason
        assert attachment.model.archive_sha256 == models.sha_b
        assert labels_of(attachment) == pytest.approx(photos.after[attachment.id])
    with worker.client(token=admin.client.token) as as_admin:
        assert as_admin.retag_attachments().queued_count == 0  # nothing is stale any more
    for client in (on_reader, admin.client, uploader.client):
        client.close()
