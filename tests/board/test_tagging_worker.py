"""The tagging worker and the upload checks, in process over a real SQLite database and a fake segmenter.

The same worker runs against real TorchServe in tests/e2e; here each failure mode is cheap to provoke.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from board_server import repository
from board_server import tagging_queue as queue
from board_server.attachments import AttachmentService, inspect_image, sniff_type
from board_server.config import Settings
from board_server.database import Database, migrate, open_database
from board_server.errors import InvalidArgument
from board_server.tagging import Segmenter, TaggingWorker, backoff_seconds
from clients.segment import (
    ClassShare,
    Segmentation,
    SegmentRejectedError,
    SegmentServerError,
    SegmentUnavailableError,
)
from tests.support import wait_for

MODEL = {"arch": "deeplabv3_mobilenet_v3_large", "weights": "random", "sha256": None, "untrained": True}


def image_bytes(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (200, 30, 30) if mode == "RGB" else 0).save(buffer, fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height (no pixel data): enough for Pillow's bomb guard."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    header = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = struct.pack(">I", 0) + b"IDAT" + struct.pack(">I", zlib.crc32(b"IDAT"))
    return b"\x89PNG\r\n\x1a\n" + header + idat


def answer(labels: dict[str, float], size: tuple[int, int] = (40, 30)) -> Segmentation:
    total = size[0] * size[1]
    classes = [
        ClassShare(index=i, name=name, pixels=round(share * total), fraction=share)
        for i, (name, share) in enumerate(labels.items())
    ]
    mask = io.BytesIO()
    Image.new("P", size, 0).save(mask, "PNG")
    return Segmentation(size[0], size[1], classes, mask.getvalue(), dict(MODEL))


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = open_database(Settings(database_url=f"sqlite:///{tmp_path / 'board.db'}", worker_threads=4))
    migrate(db.engine)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def post_id(database: Database) -> int:
    now = datetime.now(UTC)
    user = database.write(lambda c: repository.add_user(c, "Ada", "ada@example.org", now))
    return database.write(lambda c: repository.add_post(c, user.id, "Photos", "of my dog", now)).id


def start_worker(
    database: Database,
    segment: Segmenter,
    *,
    threads: int = 1,
    max_attempts: int = 5,
) -> TaggingWorker:
    worker = TaggingWorker(
        database,
        segment,
        threads=threads,
        poll_s=0.05,
        lease_s=30.0,
        backoff_max_s=0.2,
        max_attempts=max_attempts,
    )
    worker.start()
    return worker


def wait_status(service: AttachmentService, attachment_id: int, status: str, timeout: float = 10) -> None:
    wait_for(
        f"attachment {attachment_id} {status}",
        lambda: service.get_attachment(attachment_id).status == status,
        timeout,
        0.02,
    )


def tag_one(
    database: Database,
    segment: Segmenter,
    post_id: int,
    filename: str,
    fmt: str,
    *,
    status: str,
    max_attempts: int = 5,
) -> tuple[AttachmentService, int]:
    """Upload one ``fmt`` image with a worker running ``segment``; wait for ``status``; stop the worker."""
    worker = start_worker(database, segment, max_attempts=max_attempts)
    service = AttachmentService(database, 1 << 20, on_added=worker.wake)
    try:
        added = service.add_attachment(post_id, filename, "", image_bytes(fmt))
        wait_status(service, added.id, status)
    finally:
        worker.stop()
    return service, added.id


# --- upload checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("BMP", "image/bmp"),
     ("WEBP", "image/webp"), ("TIFF", "image/tiff")],
)  # fmt: skip
def test_every_supported_format_is_sniffed_with_its_size(fmt: str, mime: str) -> None:
    data = image_bytes(fmt, (37, 23))
    assert sniff_type(data) == mime
    info = inspect_image(data, "", 1 << 20)
    assert (info.content_type, info.width, info.height) == (mime, 37, 23)


@pytest.mark.parametrize(
    ("data", "content_type", "field", "text"),
    [
        (b"", "", "data", "must not be empty"),
        (b"x" * 2000, "", "data", "at most 1000 bytes"),
        (b"hello, world", "", "data", "not a supported image"),
        (b"%PDF-1.7\n", "application/pdf", "data", "not a supported image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", "data", "not a supported image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "", "data", "not a readable image/jpeg"),
        (b"BM" + b"\x00" * 40, "", "data", "not a readable image/bmp"),
        (None, "image/png", "content_type", "but the data is 'image/jpeg'"),
        (png_header_only(30_000, 30_000), "", "data", "too many pixels"),
        (png_header_only(0, 10), "", "data", ""),
    ],
)
def test_bad_uploads_are_invalid_argument_naming_the_field(
    data: bytes | None, content_type: str, field: str, text: str
) -> None:
    payload = image_bytes("JPEG") if data is None else data
    with pytest.raises(InvalidArgument) as caught:
        inspect_image(payload, content_type, 1000 if len(payload) > 1000 and data else 1 << 20)
    assert [v.field for v in caught.value.violations] == [field]
    assert text in caught.value.violations[0].description


def test_content_type_aliases_and_parameters_are_accepted() -> None:
    assert inspect_image(image_bytes("JPEG"), "IMAGE/JPG; q=1", 1 << 20).content_type == "image/jpeg"


# --- the worker ------------------------------------------------------------------------------------------


def test_upload_is_tagged_with_labels_mask_and_provenance(database: Database, post_id: int) -> None:
    worker = start_worker(database, lambda _image: answer({"dog": 0.6, "background": 0.395, "cat": 0.005}))
    service = AttachmentService(database, 1 << 20, on_added=worker.wake)
    try:
        added = service.add_attachment(post_id, "dog.jpg", "", image_bytes("JPEG"))
        assert added.status == "PENDING"
        wait_status(service, added.id, "TAGGED")
    finally:
        worker.stop()
    tagged = service.get_attachment(added.id)
    assert [(x.name, x.fraction) for x in tagged.labels] == [
        ("dog", 0.6),
        ("background", 0.395),
        ("cat", 0.005),
    ]
    assert (tagged.model_arch, tagged.model_weights, tagged.model_untrained) == (
        MODEL["arch"],
        "random",
        True,
    )
    assert Image.open(io.BytesIO(service.get_mask(added.id))).size == (40, 30)
    assert [p.id for p in service.list_posts_with_label("dog", 0, 0, 0, "").items] == [post_id]
    assert service.list_posts_with_label("dog", 0.7, 0, 0, "").items == []
    # 0 means 1 %: the cat at 0.5 % does not count, unless asked for explicitly.
    assert service.list_posts_with_label("cat", 0, 0, 0, "").items == []
    assert len(service.list_posts_with_label("cat", 0.005, 0, 0, "").items) == 1


def test_unavailable_model_server_is_retried_until_it_answers(database: Database, post_id: int) -> None:
    calls: list[float] = []

    def flaky(_image: bytes) -> Segmentation:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise SegmentUnavailableError("connection refused")
        return answer({"person": 1.0})

    service, attachment_id = tag_one(database, flaky, post_id, "p.png", "PNG", status="TAGGED")
    assert len(calls) == 3
    assert service.get_attachment(attachment_id).attempts == 3
    assert service.get_attachment(attachment_id).failure_reason == ""


def test_rejected_image_is_failed_with_the_models_reason(database: Database, post_id: int) -> None:
    def reject(_image: bytes) -> Segmentation:
        raise SegmentRejectedError(400, "corrupt_image", "image file is truncated")

    service, attachment_id = tag_one(database, reject, post_id, "bad.jpg", "JPEG", status="FAILED")
    failed = service.get_attachment(attachment_id)
    assert "corrupt_image" in failed.failure_reason
    assert "truncated" in failed.failure_reason
    assert failed.attempts == 1


def test_server_errors_fail_after_the_attempt_limit(database: Database, post_id: int) -> None:
    def broken(_image: bytes) -> Segmentation:
        raise SegmentServerError("INTERNAL", "worker died")

    service, attachment_id = tag_one(
        database, broken, post_id, "x.gif", "GIF", status="FAILED", max_attempts=3
    )
    failed = service.get_attachment(attachment_id)
    assert failed.attempts == 3
    assert "gave up after 3 attempts" in failed.failure_reason


def test_two_workers_on_one_database_tag_each_attachment_once(database: Database, post_id: int) -> None:
    seen: Counter[bytes] = Counter()
    lock = threading.Lock()

    def count(image: bytes) -> Segmentation:
        with lock:
            seen[image] += 1
        time.sleep(0.01)
        return answer({"dog": 1.0})

    service = AttachmentService(database, 1 << 20)
    ids = [
        service.add_attachment(post_id, f"{i}.png", "", image_bytes("PNG", (10 + i, 10))).id
        for i in range(30)
    ]
    workers = [start_worker(database, count, threads=3) for _ in range(2)]
    try:
        for attachment_id in ids:
            wait_status(service, attachment_id, "TAGGED")
    finally:
        for worker in workers:
            worker.stop()
    assert len(seen) == 30
    assert set(seen.values()) == {1}


def test_expired_lease_of_a_dead_worker_is_resumed(database: Database, post_id: int) -> None:
    service = AttachmentService(database, 1 << 20)
    added = service.add_attachment(post_id, "a.jpg", "", image_bytes("JPEG"))
    past = datetime.now(UTC) - timedelta(seconds=5)
    assert database.write(
        lambda c: queue.claim(c, added.id, "dead-replica", past, past + timedelta(seconds=1))
    )
    worker = start_worker(database, lambda _image: answer({"dog": 1.0}))
    try:
        wait_status(service, added.id, "TAGGED")
    finally:
        worker.stop()
    # The dead replica's late answer is not stored over the new owner's.
    late = queue.TagResult([("cat", 1.0, 1)], b"", "a", "w", None, True)
    now = datetime.now(UTC)
    assert not database.write(lambda c: queue.finish_tagged(c, added.id, "dead-replica", now, late))
    assert [x.name for x in service.get_attachment(added.id).labels] == ["dog"]


def test_a_live_lease_is_not_taken_over(database: Database, post_id: int) -> None:
    service = AttachmentService(database, 1 << 20)
    added = service.add_attachment(post_id, "a.jpg", "", image_bytes("JPEG"))
    now = datetime.now(UTC)
    assert database.write(lambda c: queue.claim(c, added.id, "one", now, now + timedelta(minutes=1)))
    assert not database.write(lambda c: queue.claim(c, added.id, "two", now, now + timedelta(minutes=1)))


def test_attachments_go_with_their_post_and_user(database: Database, post_id: int) -> None:
    service = AttachmentService(database, 1 << 20)
    first = service.add_attachment(post_id, "a.jpg", "", image_bytes("JPEG"))
    database.write(lambda c: repository.delete_post(c, post_id))
    with database.read() as conn:
        assert queue.read_image(conn, first.id) is None


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    import random

    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 30.0), (100, 30.0)]:
        delays = [backoff_seconds(attempt, 30.0, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


def test_claim_next_takes_the_oldest_due_attachment_not_leased(database: Database, post_id: int) -> None:
    service = AttachmentService(database, 1 << 20)
    first, second, third = (
        service.add_attachment(post_id, f"{i}.jpg", "", image_bytes("JPEG")).id for i in range(3)
    )
    now = datetime.now(UTC)
    later = now + timedelta(minutes=1)
    assert database.write(lambda c: queue.claim_next(c, "a", now, later, 8)) == first
    assert database.write(lambda c: queue.claim_next(c, "b", now, later, 8)) == second
    database.write(lambda c: queue.reschedule(c, second, "b", later, "unavailable"))  # due only later
    assert database.write(lambda c: queue.claim_next(c, "c", now, later, 8)) == third
    assert database.write(lambda c: queue.claim_next(c, "d", now, later, 8)) is None
