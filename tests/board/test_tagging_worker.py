"""The tagging worker and its queue, in process over a real SQLite database (migrated like a server's).

The segmentation call is the one thing injected here: a function raising clients.segment's errors the way
SegmentClient classifies TorchServe's answers (tests/serving checks that classification against a real
TorchServe), so that each failure class is cheap to provoke. The same worker runs against real TorchServe,
with faults injected into real processes, in tests/e2e/test_tagging_faults.py.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from PIL import Image
from sqlalchemy import Connection, Table, insert, select, text, update

from board_server.core.records import ModelIdentity, ServedModel, TagResult
from board_server.storage import tagging_queue as queue
from board_server.storage.engine import Database, migrate, open_database
from board_server.storage.tables import Attachment, AttachmentLabel, AttachmentPreview, Post, User
from board_server.tagging.backend import tag_result
from board_server.tagging.outcomes import backoff_seconds, classify
from board_server.tagging.worker import TaggingWorker
from clients.segment import (
    ClassShare,
    Segmentation,
    SegmentAuthError,
    SegmentBadAnswerError,
    SegmentCancelledError,
    SegmentRejectedError,
    SegmentServerError,
    SegmentTimeoutError,
    SegmentUnavailableError,
    SegmentWorkerDiedError,
)
from tests.support import wait_for

ATTACHMENTS, LABELS, PREVIEWS, POSTS, USERS = (
    cast(Table, m.__table__) for m in (Attachment, AttachmentLabel, AttachmentPreview, Post, User)
)
MODEL = {
    "arch": "deeplabv3_mobilenet_v3_large",
    "weights": "random",
    "sha256": None,
    "untrained": True,
    "archive_sha256": "a" * 64,
}


def png(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def answer(labels: dict[str, float], model: dict[str, Any] | None = None) -> Segmentation:
    size = (40, 30)
    classes = [
        ClassShare(index=i, name=name, pixels=round(share * size[0] * size[1]), fraction=share)
        for i, (name, share) in enumerate(labels.items())
    ]
    mask = io.BytesIO()
    Image.new("P", size, 0).save(mask, "PNG")
    return Segmentation(size[0], size[1], classes, mask.getvalue(), dict(model or MODEL))


class Recorder:
    """A TaggingObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.targets: Counter[str] = Counter()
        self.retries = 0
        self.expired = 0
        self.tagged_after: list[float] = []

    def call_outcome(self, kind: str, target: str) -> None:
        self.outcomes[kind] += 1
        self.targets[target] += 1

    def retried(self) -> None:
        self.retries += 1

    def lease_expired(self) -> None:
        self.expired += 1

    def tagged(self, seconds_since_upload: float) -> None:
        self.tagged_after.append(seconds_since_upload)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = open_database(f"sqlite:///{tmp_path / 'board.db'}", connections=4)
    migrate(db.engine)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def post_id(database: Database) -> int:
    now = datetime.now(UTC)

    def add(conn: Connection) -> int:
        user = conn.execute(
            insert(USERS).values(name="Ada", email="ada@example.org", create_time=now).returning(USERS.c.id)
        ).scalar_one()
        values = {
            "user_id": user,
            "title": "Photos",
            "content": "of my dog",
            "create_time": now,
            "update_time": now,
        }
        return int(conn.execute(insert(POSTS).values(**values).returning(POSTS.c.id)).scalar_one())

    return database.write(add)


def upload(database: Database, post_id: int, data: bytes | None = None) -> int:
    """A PENDING attachment row, as an upload commits it."""
    data = data or png()
    now = datetime.now(UTC)
    values = {
        "post_id": post_id, "filename": "photo.png", "content_type": "image/png", "size_bytes": len(data),
        "width": 40, "height": 30, "data": data, "status": "PENDING", "attempts": 0,
        "next_attempt_time": now, "create_time": now, "update_time": now,
    }  # fmt: skip
    return int(
        database.write(
            lambda c: c.execute(insert(ATTACHMENTS).values(**values).returning(ATTACHMENTS.c.id)).scalar_one()
        )
    )


def row(database: Database, attachment_id: int) -> Any:
    with database.read() as conn:
        return conn.execute(select(ATTACHMENTS).where(ATTACHMENTS.c.id == attachment_id)).one()


def labels(database: Database, attachment_id: int) -> list[tuple[str, float]]:
    with database.read() as conn:
        found = conn.execute(
            select(LABELS.c.name, LABELS.c.fraction)
            .where(LABELS.c.attachment_id == attachment_id)
            .order_by(LABELS.c.fraction.desc())
        )
        return [(r.name, r.fraction) for r in found]


# A segmentation call as the tests script it: what TorchServe's client answers or raises.
Segmenter = Callable[[bytes], Segmentation]


class ScriptedBackend:
    """The inference backend with a scripted model server behind it: answers converted as the TorchServe
    backend converts them."""

    target = "scripted"

    def __init__(self, segment: Segmenter) -> None:
        self._segment = segment

    def segment(self, image: bytes) -> TagResult:
        return tag_result(self._segment(image))

    def describe(self) -> ServedModel:
        raise NotImplementedError("the worker never describes")

    def close(self) -> None:
        pass


def start_worker(
    database: Database,
    segment: Segmenter,
    *,
    threads: int = 1,
    max_attempts: int = 5,
    lease_s: float = 30.0,
    observer: Recorder | None = None,
) -> TaggingWorker:
    worker = TaggingWorker(
        database,
        ScriptedBackend(segment),
        threads=threads,
        poll_s=0.05,
        lease_s=lease_s,
        backoff_max_s=0.2,
        max_attempts=max_attempts,
        observer=observer,
    )
    worker.start()
    return worker


def wait_status(database: Database, attachment_id: int, status: str, timeout: float = 20) -> Any:
    wait_for(
        f"attachment {attachment_id} {status}",
        lambda: row(database, attachment_id).status == status,
        timeout,
        0.02,
    )
    return row(database, attachment_id)


def tag_one(
    database: Database, segment: Segmenter, post_id: int, status: str, **options: Any
) -> tuple[Any, Recorder]:
    """Upload one image with a worker running ``segment``; wait for ``status``; stop the worker."""
    observer = Recorder()
    worker = start_worker(database, segment, observer=observer, **options)
    try:
        attachment_id = upload(database, post_id)
        worker.wake()
        found = wait_status(database, attachment_id, status)
    finally:
        worker.stop()
    return found, observer


def failing(errors: Sequence[Exception], then: Segmentation | None = None) -> Callable[[bytes], Segmentation]:
    """A segmentation call that raises ``errors`` one by one, then answers ``then`` (or raises the last)."""
    calls = iter(errors)

    def segment(_image: bytes) -> Segmentation:
        error = next(calls, None)
        if error is not None:
            raise error
        if then is None:
            raise errors[-1]
        return then

    return segment


# --- the verdicts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind", "action"),
    [
        (SegmentRejectedError(400, "corrupt", "truncated"), "rejected", "fail"),
        (SegmentRejectedError(413, "too_large", "50 MP"), "rejected", "fail"),
        (SegmentRejectedError(415, "unsupported_format", "HEIC"), "rejected", "fail"),
        (SegmentBadAnswerError("bad-answer", "not JSON"), "bad_answer", "fail"),
        (SegmentAuthError("token refused"), "auth", "pause"),
        (SegmentUnavailableError("connection refused"), "unavailable", "pause"),
        (SegmentUnavailableError("Prediction failed", reached=True), "unavailable", "retry"),
        (SegmentTimeoutError("deadline"), "timeout", "retry"),
        (SegmentWorkerDiedError("RESOURCE_EXHAUSTED", "Worker died."), "server_error", "retry"),
        (SegmentCancelledError("CANCELLED", "stream removed"), "cancelled", "retry"),
        (SegmentServerError("INTERNAL", "boom"), "server_error", "retry"),
        (RuntimeError("a bug"), "server_error", "retry"),
    ],
)
def test_every_outcome_has_a_verdict(error: Exception, kind: str, action: str) -> None:
    verdict = classify(error)
    assert (verdict.kind, verdict.action) == (kind, action)
    assert str(error).rsplit(": ", 1)[-1] in verdict.reason  # the reason keeps the detail


def test_a_dead_worker_is_not_named_too_large() -> None:
    reason = classify(SegmentWorkerDiedError("RESOURCE_EXHAUSTED", "Worker died.")).reason
    assert "worker died" in reason and "too_large" not in reason and "413" not in reason


# --- the worker ------------------------------------------------------------------------------------------


def test_upload_is_tagged_with_labels_mask_and_the_models_identity(database: Database, post_id: int) -> None:
    found, observer = tag_one(
        database, lambda _image: answer({"dog": 0.6, "background": 0.395, "cat": 0.005}), post_id, "TAGGED"
    )
    assert labels(database, found.id) == [("dog", 0.6), ("background", 0.395), ("cat", 0.005)]
    assert (found.model_arch, found.model_weights, found.model_untrained) == (MODEL["arch"], "random", True)
    assert found.model_archive_sha256 == "a" * 64
    assert Image.open(io.BytesIO(found.mask_png)).size == (40, 30)
    assert (found.attempts, found.claim_token, found.lease_until, found.failure_reason) == (
        1,
        None,
        None,
        None,
    )
    assert observer.outcomes == Counter(ok=1) and len(observer.tagged_after) == 1
    assert observer.tagged_after[0] >= 0


def test_an_outage_pauses_the_worker_and_never_uses_up_attempts(database: Database, post_id: int) -> None:
    down = [SegmentUnavailableError("failed to connect to all addresses")] * 6
    found, observer = tag_one(
        database, failing(down, answer({"person": 1.0})), post_id, "TAGGED", max_attempts=2
    )
    assert found.attempts == 1  # six attempts given back, the seventh counted
    assert observer.outcomes == Counter(unavailable=6, ok=1) and observer.retries == 6


def test_a_refused_key_pauses_loudly_and_is_retried_until_it_works(
    database: Database, post_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    refused = [SegmentAuthError("token refused: Token Authorization failed")] * 4
    with caplog.at_level(logging.ERROR, logger="board_server.tagging.worker"):
        found, observer = tag_one(
            database, failing(refused, answer({"cat": 1.0})), post_id, "TAGGED", max_attempts=2
        )
    assert found.attempts == 1
    assert observer.outcomes == Counter(auth=4, ok=1)
    paused = [r for r in caplog.records if r.levelno == logging.ERROR and "TAGGING PAUSED" in r.getMessage()]
    assert len(paused) == 4 and "refused our key" in paused[0].getMessage()


@pytest.mark.parametrize(
    "error",
    [
        SegmentRejectedError(400, "corrupt", "truncated or corrupt image data"),
        SegmentRejectedError(415, "unsupported_format", "HEIC images are not supported"),
        SegmentBadAnswerError("bad-answer", "answer is not JSON"),
    ],
)
def test_a_rejected_image_or_malformed_answer_fails_at_once_with_the_reason(
    database: Database, post_id: int, error: Exception
) -> None:
    found, observer = tag_one(database, failing([error]), post_id, "FAILED")
    assert found.attempts == 1
    assert str(error).split(": ", 1)[-1] in found.failure_reason
    assert sum(observer.outcomes.values()) == 1 and observer.retries == 0


@pytest.mark.parametrize(
    "error",
    [
        SegmentWorkerDiedError("RESOURCE_EXHAUSTED", "Worker died."),
        SegmentServerError("INTERNAL", "boom"),
        SegmentServerError(500, "Internal Server Error"),
        SegmentTimeoutError("no answer in time"),
        SegmentCancelledError("CANCELLED", "stream removed"),
        SegmentUnavailableError("Prediction failed", reached=True),
    ],
)
def test_transient_faults_are_retried_then_failed_after_the_attempt_limit(
    database: Database, post_id: int, error: Exception
) -> None:
    found, observer = tag_one(database, failing([error]), post_id, "FAILED", max_attempts=3)
    assert found.attempts == 3
    assert found.failure_reason.startswith("gave up after 3 attempts; last error: ")
    assert observer.retries == 2


def test_a_transient_fault_then_an_answer_is_tagged(database: Database, post_id: int) -> None:
    faults = [SegmentWorkerDiedError("RESOURCE_EXHAUSTED", "Worker died."), SegmentTimeoutError("slow")]
    found, observer = tag_one(
        database, failing(faults, answer({"dog": 1.0})), post_id, "TAGGED", max_attempts=3
    )
    assert found.attempts == 3 and found.failure_reason is None
    assert observer.outcomes == Counter(server_error=1, timeout=1, ok=1)


def test_a_failure_to_store_the_result_is_retried_and_logged(
    database: Database, post_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    # A real database fault: a trigger refuses to mark anything TAGGED until it is dropped.
    database.write(
        lambda c: c.execute(
            text(
                "CREATE TRIGGER refuse_tagged BEFORE UPDATE OF status ON attachments "
                "WHEN NEW.status = 'TAGGED' BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
            )
        )
    )
    worker = start_worker(database, lambda _image: answer({"dog": 1.0}))
    try:
        with caplog.at_level(logging.ERROR, logger="board_server.tagging.worker"):
            attachment_id = upload(database, post_id)
            worker.wake()

            def logged_twice() -> bool:
                return sum("could not store its labels" in r.getMessage() for r in caplog.records) >= 2

            wait_for("two logged store failures", logged_twice, 20)
            database.write(lambda c: c.execute(text("DROP TRIGGER refuse_tagged")))
            found = wait_status(database, attachment_id, "TAGGED")
    finally:
        worker.stop()
    assert found.attempts == 1  # stored by the same claim, not redone
    failures = [r for r in caplog.records if "could not store its labels" in r.getMessage()]
    assert all(r.levelno == logging.ERROR and r.exc_info for r in failures)
    assert "disk on fire" in str(failures[0].exc_info[1] if failures[0].exc_info else "")


def test_two_workers_on_one_database_tag_each_attachment_once(database: Database, post_id: int) -> None:
    seen: Counter[bytes] = Counter()
    lock = threading.Lock()

    def count(image: bytes) -> Segmentation:
        with lock:
            seen[image] += 1
        time.sleep(0.01)
        return answer({"dog": 1.0})

    ids = [upload(database, post_id, png((10 + i, 10))) for i in range(30)]
    workers = [start_worker(database, count, threads=3) for _ in range(2)]
    try:
        for attachment_id in ids:
            wait_status(database, attachment_id, "TAGGED")
    finally:
        for worker in workers:
            worker.stop()
    assert len(seen) == 30
    assert set(seen.values()) == {1}


# --- the queue: claims, fencing, order ---------------------------------------------------------------------


def _claim(database: Database, worker: str, now: datetime, lease_s: float = 60) -> queue.Claim | None:
    return database.write(lambda c: queue.claim_next(c, worker, now, now + timedelta(seconds=lease_s), 8))


def _claim_leased_in_the_past(database: Database, attachment_id: int, worker: str, seconds_ago: float) -> str:
    """A claim taken ``seconds_ago`` with a one-second lease, long expired: what a dead worker leaves."""
    then = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    token = database.write(lambda c: queue.claim(c, attachment_id, worker, then, then + timedelta(seconds=1)))
    assert token is not None
    return token


def test_an_expired_lease_is_resumed_and_the_old_claim_can_no_longer_write(
    database: Database, post_id: int
) -> None:
    attachment_id = upload(database, post_id)
    stale = _claim_leased_in_the_past(database, attachment_id, "same-process", 5)
    observer = Recorder()
    worker = start_worker(database, lambda _image: answer({"dog": 1.0}), observer=observer)
    try:
        found = wait_status(database, attachment_id, "TAGGED")
    finally:
        worker.stop()
    assert found.attempts == 2 and observer.expired == 1
    # The first claim's late outcomes are refused, whoever sends them: fencing is per claim, not per process.
    late = TagResult([("cat", 1.0, 1)], b"", ModelIdentity("a", "w", None, None, True))
    now = datetime.now(UTC)
    assert not database.write(lambda c: queue.finish_tagged(c, attachment_id, stale, now, late))
    assert not database.write(lambda c: queue.finish_failed(c, attachment_id, stale, now, "late"))
    assert not database.write(lambda c: queue.reschedule(c, attachment_id, stale, now, "late"))
    assert (
        labels(database, attachment_id) == [("dog", 1.0)] and row(database, attachment_id).status == "TAGGED"
    )


def test_two_claims_from_one_process_are_fenced_apart(database: Database, post_id: int) -> None:
    attachment_id = upload(database, post_id)
    first = _claim_leased_in_the_past(database, attachment_id, "host:1:worker", 10)
    now = datetime.now(UTC)
    second = _claim(database, "host:1:worker", now)
    assert second is not None and second.took_over and first != second.token
    result = TagResult([("cat", 1.0, 1)], b"", ModelIdentity("a", "w", None, "b" * 64, True))
    assert not database.write(lambda c: queue.finish_tagged(c, attachment_id, first, now, result))
    assert database.write(lambda c: queue.finish_tagged(c, attachment_id, second.token, now, result))


def test_a_live_lease_is_not_taken_over(database: Database, post_id: int) -> None:
    upload(database, post_id)
    now = datetime.now(UTC)
    assert _claim(database, "one", now) is not None
    assert _claim(database, "two", now) is None


def test_claims_take_the_oldest_due_upload_first(database: Database, post_id: int) -> None:
    first, second, third = (upload(database, post_id) for _ in range(3))
    now = datetime.now(UTC)
    later = now + timedelta(minutes=1)
    a, b = _claim(database, "a", now), _claim(database, "b", now)
    assert a is not None and b is not None and (a.attachment_id, b.attachment_id) == (first, second)
    database.write(lambda c: queue.reschedule(c, second, b.token, later, "unavailable"))  # due only later
    c = _claim(database, "c", now)
    assert c is not None and c.attachment_id == third
    assert _claim(database, "d", now) is None


def test_claims_beyond_the_attempt_limit_fail_without_calling_the_model(
    database: Database, post_id: int
) -> None:
    attachment_id = upload(database, post_id)
    for i in range(3):  # three claims whose processes died: leases that expired without an outcome
        _claim_leased_in_the_past(database, attachment_id, f"dead-{i}", 30 - 2 * i)
    calls: list[bytes] = []

    def segment(image: bytes) -> Segmentation:
        calls.append(image)
        return answer({"dog": 1.0})

    worker = start_worker(database, segment, max_attempts=3)
    try:
        failed = wait_status(database, attachment_id, "FAILED")
    finally:
        worker.stop()
    assert calls == []
    assert failed.failure_reason == "gave up after 3 attempts whose leases expired without an outcome"


def _tag_directly(database: Database, attachment_id: int, result: TagResult) -> None:
    now = datetime.now(UTC)
    claim = _claim(database, "direct", now)
    assert claim is not None and claim.attachment_id == attachment_id
    assert database.write(lambda c: queue.finish_tagged(c, attachment_id, claim.token, now, result))


def test_a_retag_keeps_the_old_labels_until_the_new_ones_replace_them(
    database: Database, post_id: int
) -> None:
    old = TagResult(
        [("cat", 0.7, 840), ("background", 0.3, 360)], png(), ModelIdentity("arch", "w", None, "1" * 64, True)
    )
    retagged = upload(database, post_id)
    _tag_directly(database, retagged, old)
    now = datetime.now(UTC)
    preview = {
        "attachment_id": retagged, "max_size": 256, "overlay": True, "content_type": "image/png",
        "data": b"cached", "size_bytes": len(b"cached"), "width": 40, "height": 30, "create_time": now,
        "last_use_time": now,
    }  # fmt: skip
    database.write(lambda c: c.execute(insert(PREVIEWS).values(**preview)))
    assert database.write(lambda c: queue.request_retag(c, now, unless_archive_sha256="2" * 64)) == 1
    assert database.write(lambda c: queue.request_retag(c, now, unless_archive_sha256="2" * 64)) == 0
    pending = upload(database, post_id)
    now = datetime.now(UTC)

    # An upload goes first; the re-tag keeps its status and labels while it waits and while it is leased.
    first = _claim(database, "w", now)
    assert first is not None and (first.attachment_id, first.retag) == (pending, False)
    second = _claim(database, "w", now)
    assert second is not None and (second.attachment_id, second.retag, second.attempts) == (retagged, True, 1)
    during = row(database, retagged)
    assert (during.status, during.retag_pending, during.model_archive_sha256) == ("TAGGED", True, "1" * 64)
    assert labels(database, retagged) == [("cat", 0.7), ("background", 0.3)]

    new = TagResult([("dog", 1.0, 1200)], png(), ModelIdentity("arch", "w", None, "2" * 64, True))
    assert database.write(lambda c: queue.finish_tagged(c, retagged, second.token, now, new))
    after = row(database, retagged)
    assert (after.status, after.retag_pending, after.model_archive_sha256) == ("TAGGED", False, "2" * 64)
    assert labels(database, retagged) == [("dog", 1.0)]
    with database.read() as conn:
        assert conn.execute(select(PREVIEWS).where(PREVIEWS.c.attachment_id == retagged)).first() is None


def test_a_failed_retag_keeps_the_attachment_tagged_with_its_labels(database: Database, post_id: int) -> None:
    attachment_id = upload(database, post_id)
    _tag_directly(
        database,
        attachment_id,
        TagResult([("cat", 1.0, 1200)], png(), ModelIdentity("a", "w", None, "1" * 64, True)),
    )
    now = datetime.now(UTC)
    assert database.write(lambda c: queue.request_retag(c, now, attachment_id=attachment_id)) == 1
    claim = _claim(database, "w", now)
    assert claim is not None and claim.retag
    assert database.write(lambda c: queue.finish_failed(c, attachment_id, claim.token, now, "gave up"))
    after = row(database, attachment_id)
    assert (after.status, after.retag_pending, after.failure_reason) == ("TAGGED", False, "gave up")
    assert labels(database, attachment_id) == [("cat", 1.0)]


def test_requeue_failed_makes_a_failed_attachment_pending_with_fresh_attempts(
    database: Database, post_id: int
) -> None:
    found, _ = tag_one(database, failing([SegmentRejectedError(400, "corrupt", "bad")]), post_id, "FAILED")
    now = datetime.now(UTC)
    assert database.write(lambda c: queue.requeue_failed(c, found.id, now))
    again = row(database, found.id)
    assert (again.status, again.attempts, again.failure_reason, again.claim_token) == (
        "PENDING",
        0,
        None,
        None,
    )
    assert not database.write(lambda c: queue.requeue_failed(c, found.id, now))  # PENDING, not FAILED
    assert not database.write(lambda c: queue.requeue_failed(c, 10**9, now))
    tagged = upload(database, found.post_id)
    database.write(
        lambda c: c.execute(update(ATTACHMENTS).where(ATTACHMENTS.c.id == tagged).values(status="TAGGED"))
    )
    assert not database.write(lambda c: queue.requeue_failed(c, tagged, now))


def test_deleted_attachments_leave_nothing_to_read(database: Database, post_id: int) -> None:
    attachment_id = upload(database, post_id)
    database.write(lambda c: c.execute(text("DELETE FROM posts WHERE id = :id"), {"id": post_id}))
    with database.read() as conn:
        assert queue.read_image(conn, attachment_id) is None


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    import random

    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 30.0), (100, 30.0)]:
        delays = [backoff_seconds(attempt, 30.0, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
