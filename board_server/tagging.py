"""The tagging worker: background threads in the board server that send PENDING attachments to TorchServe over
gRPC (the generated stubs, with the token; clients/segment.py) and store labels, mask and model provenance.

Nothing is lost when the model server is slow, down or restarting: the upload is already committed. Each
attachment is claimed with a lease (attachment_repository.claim), so one replica of many tags it; a board that
dies mid-call leaves a lease that expires, and any replica resumes the work. Failures:

- unavailable / timeout / token unreadable → retried with exponential backoff and jitter, without limit,
  and the whole worker pauses as long (no hammering a server that is down);
- the handler rejects the image (4xx body) → FAILED with the model's reason;
- any other server error (INTERNAL, bad answer) → retried, FAILED after ``tagging_max_attempts`` attempts.

Woken at once by an upload in this process, and every ``tagging_poll_s`` for work uploaded through others.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from board_server import tagging_queue as queue
from board_server.config import Settings
from board_server.database import Database
from clients.segment import (
    Segmentation,
    SegmentAuthError,
    SegmentRejectedError,
    SegmentTimeoutError,
    SegmentUnavailableError,
)

logger = logging.getLogger(__name__)

BASE_BACKOFF_S = 0.5
_SCAN = 8


# Image bytes → what the model found; raises clients.segment's errors.
Segmenter = Callable[[bytes], Segmentation]


def backoff_seconds(attempt: int, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half of min(cap, base·2^(attempt-1)) plus a random half."""
    ceiling = min(cap, BASE_BACKOFF_S * 2 ** max(0, min(attempt - 1, 30)))
    return float(ceiling / 2 + (rng or random).uniform(0, ceiling / 2))


def _now() -> datetime:
    return datetime.now(UTC)


class TaggingWorker:
    """``threads`` loops that claim, tag and record attachments until ``stop()``."""

    def __init__(
        self,
        db: Database,
        segment: Segmenter,
        *,
        threads: int = 2,
        poll_s: float = 2.0,
        lease_s: float = 90.0,
        backoff_max_s: float = 30.0,
        max_attempts: int = 5,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._db = db
        self._segment = segment
        self._threads_wanted = threads
        self._poll_s = poll_s
        self._lease = timedelta(seconds=lease_s)
        self._backoff_max_s = backoff_max_s
        self._max_attempts = max_attempts
        self._on_close = on_close
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._generation = 0
        self._pause_until = 0.0  # monotonic; set while the model server is unreachable
        self._outage = 0  # consecutive unavailable answers
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self._threads_wanted):
            thread = threading.Thread(target=self._run, name=f"board-tagger-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("tagging worker %s started with %d thread(s)", self.worker_id, self._threads_wanted)

    def wake(self) -> None:
        """New work: every idle thread looks for it now instead of at the next poll."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; let calls in flight finish for up to ``timeout`` s (their leases expire if not)."""
        self._stopping.set()
        self.wake()
        for thread in self._threads:
            thread.join(timeout=timeout / max(1, len(self._threads)))
        if self._on_close is not None:
            self._on_close()

    # --- the loop -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._changed:
                generation = self._generation
            try:
                attachment_id = None if self._paused() else self._claim_next()
                if attachment_id is not None:
                    self._tag(attachment_id)
                    continue
            except Exception:  # a database hiccup must not kill the thread; the lease covers the work
                logger.exception("tagging loop error; retrying after the poll interval")
            with self._changed:
                if self._generation == generation:  # nothing uploaded since we looked
                    self._changed.wait(self._wait_s())

    def _paused(self) -> bool:
        return time.monotonic() < self._pause_until

    def _wait_s(self) -> float:
        remaining = self._pause_until - time.monotonic()
        return max(0.05, remaining) if remaining > 0 else self._poll_s

    def _claim_next(self) -> int | None:
        now = _now()

        def take(conn: Connection) -> int | None:
            return queue.claim_next(conn, self.worker_id, now, now + self._lease, _SCAN)

        claimed: int | None = self._db.write(take)
        return claimed

    def _tag(self, attachment_id: int) -> None:
        with self._db.read() as conn:
            found = queue.read_image(conn, attachment_id)
        if found is None:
            return  # deleted meanwhile
        image, attempts = found
        try:
            answer = self._segment(image)
        except SegmentRejectedError as exc:
            if self._stopping.is_set():  # a call cancelled by shutdown is not the model's verdict
                self._retry(attachment_id, attempts, f"interrupted by shutdown: {exc}", transient=True)
                return
            reason = f"rejected by the model ({exc.status} {exc.code}): {exc.message}"
            self._write(lambda c: queue.finish_failed(c, attachment_id, self.worker_id, _now(), reason))
            logger.info("attachment %d FAILED: %s", attachment_id, reason)
            return
        except (SegmentUnavailableError, SegmentTimeoutError, SegmentAuthError) as exc:
            self._retry(attachment_id, attempts, f"{type(exc).__name__}: {exc}", transient=True)
            return
        except Exception as exc:  # SegmentServerError or anything unexpected: bounded retries
            reason = f"{type(exc).__name__}: {exc}"
            if attempts >= self._max_attempts and not self._stopping.is_set():
                failed = f"gave up after {attempts} attempts; last error {reason}"
                self._write(lambda c: queue.finish_failed(c, attachment_id, self.worker_id, _now(), failed))
                logger.warning("attachment %d FAILED: %s", attachment_id, failed)
            else:
                self._retry(attachment_id, attempts, reason, transient=False)
            return
        self._outage = 0
        model = answer.model
        result = queue.TagResult(
            labels=[(c.name, float(c.fraction), int(c.pixels)) for c in answer.classes],
            mask_png=answer.mask_png,
            arch=str(model.get("arch") or "unknown"),
            weights=str(model.get("weights") or "unknown"),
            sha256=str(model["sha256"]) if model.get("sha256") else None,
            untrained=bool(model.get("untrained", True)),
        )
        if self._write(lambda c: queue.finish_tagged(c, attachment_id, self.worker_id, _now(), result)):
            logger.info(
                "attachment %d TAGGED: %s",
                attachment_id,
                ", ".join(f"{n} {f:.0%}" for n, f, _ in result.labels[:5]),
            )
        else:
            logger.warning("attachment %d: lease lost before the result was stored; dropped", attachment_id)

    def _retry(self, attachment_id: int, attempts: int, reason: str, *, transient: bool) -> None:
        delay = backoff_seconds(attempts, self._backoff_max_s)
        if transient:
            # The server is down for everyone: pause the whole worker, growing with the outage.
            self._outage += 1
            pause = backoff_seconds(self._outage, self._backoff_max_s)
            self._pause_until = max(self._pause_until, time.monotonic() + pause)
            delay = min(delay, pause)
        due = _now() + timedelta(seconds=delay)
        self._write(lambda c: queue.reschedule(c, attachment_id, self.worker_id, due, reason))
        logger.warning(
            "attachment %d: attempt %d failed (%s); retry in %.1fs", attachment_id, attempts, reason, delay
        )

    def _write(self, work: Callable[..., bool]) -> bool:
        try:
            return bool(self._db.write(work))
        except Exception:
            logger.exception("could not record a tagging outcome; the lease will expire and it is retried")
            return False


def build_tagging_worker(settings: Settings, db: Database) -> TaggingWorker | None:
    """The worker for ``settings``, or None (logged loudly) when no segmentation target is configured."""
    if not settings.segmentation_target:
        logger.warning(
            "TAGGING IS OFF: BOARD_SEGMENTATION_TARGET (--segmentation-target) is not set; attachments are "
            "stored and stay PENDING until a board server with a target runs"
        )
        return None
    from clients.segment import SegmentClient, ServingEndpoints, TokenSource

    endpoints = ServingEndpoints(
        inference_url="",
        management_url="",
        grpc_inference_target=settings.segmentation_target,
        model_name=settings.segmentation_model,
    )
    token_file = settings.segmentation_token_file
    tokens = TokenSource.from_key_file(token_file) if token_file else TokenSource()
    client = SegmentClient(
        endpoints,
        tokens,
        timeout_s=settings.segmentation_timeout_s,
        # Reconnect within ~2 s after TorchServe comes back (gRPC's default backoff grows to 120 s).
        channel_options=[("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)],
    )

    def segment(image: bytes) -> Segmentation:
        return client.segment(image, transport="grpc")

    lease_s = settings.tagging_lease_seconds
    logger.info(
        "tagging via TorchServe gRPC %s model %r (token file %s, timeout %.0fs, lease %.0fs)",
        settings.segmentation_target,
        settings.segmentation_model,
        token_file or "none",
        settings.segmentation_timeout_s,
        lease_s,
    )
    return TaggingWorker(
        db,
        segment,
        threads=settings.tagging_workers,
        poll_s=settings.tagging_poll_s,
        lease_s=lease_s,
        backoff_max_s=settings.tagging_backoff_max_s,
        max_attempts=settings.tagging_max_attempts,
        on_close=client.close,
    )
