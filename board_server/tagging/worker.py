"""The tagging worker: background threads in each board server process that send PENDING attachments (then
queued re-tags) to the inference backend and store labels, mask and the model's identity.

Nothing is lost when the model server is slow, down or restarting: the upload is already committed. Each
attachment is claimed with a lease and a fresh claim token (storage/tagging_queue.py), so one worker of one
process of one replica tags it, and only that claim can store an outcome; a process that dies mid-call
leaves a lease that expires, and any worker resumes the work. What each failure leads to is
tagging/outcomes.py's verdict. Woken at once by an upload in this process, and every ``poll_s`` for work
uploaded through others.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import Connection

from board_server.core import spans
from board_server.core.limits import FAILURE_REASON_MAX
from board_server.storage import tagging_queue as queue
from board_server.storage.engine import Database
from board_server.tagging.backend import InferenceBackend
from board_server.tagging.outcomes import backoff_seconds, classify
from clients.segment import SegmentError

logger = logging.getLogger(__name__)

_SCAN = 8
_REASON_MAX = FAILURE_REASON_MAX - 100  # a reason is cut well inside the column


class TaggingObserver(Protocol):
    """What the worker reports as it goes, for metrics. Every method must return quickly and never raise."""

    def call_outcome(self, kind: str, target: str) -> None:
        """One segmentation call ended: ok, rejected, bad_answer, timeout, server_error, cancelled,
        unavailable or auth; ``target`` is the model server that answered or failed last (may be empty)."""

    def retried(self) -> None:
        """An attachment was rescheduled for another attempt."""

    def lease_expired(self) -> None:
        """A claim took over work whose previous lease had expired without an outcome."""

    def tagged(self, seconds_since_upload: float) -> None:
        """An upload was TAGGED (re-tags are not counted), this long after it was stored."""


class NoObserver:
    """The default observer: reports nothing."""

    def call_outcome(self, kind: str, target: str) -> None:
        pass

    def retried(self) -> None:
        pass

    def lease_expired(self) -> None:
        pass

    def tagged(self, seconds_since_upload: float) -> None:
        pass


def _now() -> datetime:
    return datetime.now(UTC)


def _short(reason: str) -> str:
    return reason if len(reason) <= _REASON_MAX else reason[: _REASON_MAX - 1] + "…"


class TaggingWorker:
    """``threads`` loops that claim, tag and record attachments until ``stop()``."""

    def __init__(
        self,
        db: Database,
        backend: InferenceBackend,
        *,
        threads: int = 2,
        poll_s: float = 2.0,
        lease_s: float = 90.0,
        backoff_max_s: float = 30.0,
        max_attempts: int = 5,
        observer: TaggingObserver | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        # For people reading the table; the claim token, not this id, fences the writes.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._db = db
        self._backend = backend
        self._threads_wanted = threads
        self._poll_s = poll_s
        self._lease_s = lease_s
        self._backoff_max_s = backoff_max_s
        self._max_attempts = max_attempts
        self._observer: TaggingObserver = observer or NoObserver()
        # Told after every stored outcome (WatchAttachment streams in this process look at once).
        self._on_change = on_change
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._generation = 0
        self._pause_lock = threading.Lock()
        self._pause_until = 0.0  # monotonic; set while the model server is unusable
        self._outage = 0  # consecutive pausing outcomes
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

    # --- the loop -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._changed:
                generation = self._generation
            try:
                asked = time.time_ns()
                claim = None if self._paused() else self._claim_next()
                if claim is not None:
                    self._traced_tag(claim, asked, time.monotonic() + self._lease_s)
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

    def _claim_next(self) -> queue.Claim | None:
        now = _now()
        lease_until = now + timedelta(seconds=self._lease_s)

        def take(conn: Connection) -> queue.Claim | None:
            return queue.claim_next(conn, self.worker_id, now, lease_until, _SCAN)

        claimed: queue.Claim | None = self._db.write(take)
        return claimed

    def _traced_tag(self, claim: queue.Claim, asked_ns: int, lease_end: float) -> None:
        """``_tag`` inside a span that joins the upload's trace: claim, the TorchServe call (a gRPC client
        span of the instrumentation, its context sent in the call's metadata) and store below it."""
        attributes = {"attachment.id": claim.attachment_id, "attempt": claim.attempts, "retag": claim.retag}
        with spans.span("tag attachment", traceparent=claim.traceparent, **attributes):
            spans.recorded_span("claim", asked_ns, time.time_ns(), worker=self.worker_id)
            try:
                self._tag(claim, lease_end)
            finally:
                if self._on_change is not None:
                    self._on_change()

    def _tag(self, claim: queue.Claim, lease_end: float) -> None:
        attachment_id = claim.attachment_id
        if claim.took_over:
            self._observer.lease_expired()
            logger.warning(
                "attachment %d: the previous lease expired without an outcome; taking over (attempt %d)",
                attachment_id,
                claim.attempts,
            )
        if claim.attempts > self._max_attempts:
            reason = f"gave up after {claim.attempts - 1} attempts whose leases expired without an outcome"
            self._finish_failed(claim, lease_end, reason)
            return
        with self._db.read() as conn:
            image = queue.read_image(conn, attachment_id)
        if image is None:
            return  # deleted meanwhile
        try:
            result = self._backend.segment(image)
        except Exception as exc:
            self._call_failed(claim, lease_end, exc)
            return
        self._observer.call_outcome("ok", result.server)
        self._outage_over()
        token = claim.token
        with spans.span("store", labels=len(result.labels)):
            stored = self._store(
                attachment_id,
                "its labels",
                lease_end,
                lambda c: queue.finish_tagged(c, attachment_id, token, _now(), result),
            )
        if stored:
            logger.info(
                "attachment %d TAGGED%s: %s",
                attachment_id,
                " again" if claim.retag else "",
                ", ".join(f"{n} {f:.0%}" for n, f, _ in result.labels[:5]),
            )
            if not claim.retag:
                self._observer.tagged((_now() - claim.create_time).total_seconds())
        elif stored is False:
            logger.warning(
                "attachment %d: its claim was taken over before the labels were stored", attachment_id
            )

    def _call_failed(self, claim: queue.Claim, lease_end: float, exc: Exception) -> None:
        verdict = classify(exc)
        self._observer.call_outcome(verdict.kind, exc.target if isinstance(exc, SegmentError) else "")
        if not isinstance(exc, SegmentError):
            logger.error(
                "attachment %d: unexpected error from the segmentation call",
                claim.attachment_id,
                exc_info=exc,
            )
        if verdict.action == "fail":
            self._outage_over()  # the server answered
            self._finish_failed(claim, lease_end, verdict.reason)
            return
        if self._stopping.is_set():  # a call cut short by our own shutdown says nothing about the image
            self._reschedule(
                claim, lease_end, 0.0, f"interrupted by shutdown: {verdict.reason}", counted=False
            )
            return
        if verdict.action == "pause":
            delay = self._pause()
            self._reschedule(claim, lease_end, delay, verdict.reason, counted=False)
            if verdict.kind == "auth":
                logger.error(
                    "TAGGING PAUSED for %.1fs: %s. Check --segmentation-token-file and that the launcher "
                    "renewing TorchServe's keys runs (seg_handler.launcher).",
                    delay,
                    verdict.reason,
                )
            else:
                logger.warning("tagging paused for %.1fs: %s", delay, verdict.reason)
            return
        self._outage_over()
        if claim.attempts >= self._max_attempts:
            self._finish_failed(
                claim, lease_end, f"gave up after {claim.attempts} attempts; last error: {verdict.reason}"
            )
            return
        delay = backoff_seconds(claim.attempts, self._backoff_max_s)
        if self._reschedule(claim, lease_end, delay, verdict.reason, counted=True):
            logger.warning(
                "attachment %d: attempt %d of %d failed (%s); retry in %.1fs",
                claim.attachment_id,
                claim.attempts,
                self._max_attempts,
                verdict.reason,
                delay,
            )

    # --- outcomes, stored under the claim -----------------------------------------------------------------

    def _finish_failed(self, claim: queue.Claim, lease_end: float, reason: str) -> None:
        attachment_id, token, text = claim.attachment_id, claim.token, _short(reason)
        stored = self._store(
            attachment_id,
            "its failure",
            lease_end,
            lambda c: queue.finish_failed(c, attachment_id, token, _now(), text),
        )
        if stored:
            logger.warning(
                "attachment %d FAILED%s: %s", attachment_id, " to re-tag" if claim.retag else "", text
            )
        elif stored is False:
            logger.warning(
                "attachment %d: its claim was taken over before the failure was stored", attachment_id
            )

    def _reschedule(
        self, claim: queue.Claim, lease_end: float, delay: float, reason: str, *, counted: bool
    ) -> bool:
        attachment_id, token, text = claim.attachment_id, claim.token, _short(reason)
        due = _now() + timedelta(seconds=delay)
        stored = self._store(
            attachment_id,
            "its next attempt",
            lease_end,
            lambda c: queue.reschedule(c, attachment_id, token, due, text, count_attempt=counted),
        )
        if stored:
            self._observer.retried()
        elif stored is False:
            logger.warning("attachment %d: its claim was taken over before it was rescheduled", attachment_id)
        return bool(stored)

    def _store(
        self, attachment_id: int, what: str, lease_end: float, work: Callable[[Connection], bool]
    ) -> bool | None:
        """Run ``work`` until it commits: its result (False: the claim was lost), or None when the database
        kept failing until the lease ran out (logged; the next claim redoes the work)."""
        tries = 0
        while True:
            try:
                return bool(self._db.write(work))
            except Exception:
                tries += 1
                delay = backoff_seconds(tries, self._backoff_max_s)
                if self._stopping.is_set() or time.monotonic() + delay >= lease_end:
                    logger.exception(
                        "attachment %d: could not store %s after %d tries; giving up as its lease runs out, "
                        "it will be claimed and tried again",
                        attachment_id,
                        what,
                        tries,
                    )
                    return None
                logger.exception(
                    "attachment %d: could not store %s (try %d); retrying in %.1fs",
                    attachment_id,
                    what,
                    tries,
                    delay,
                )
                time.sleep(delay)

    # --- pausing while the model server is unusable -------------------------------------------------------

    def _pause(self) -> float:
        with self._pause_lock:
            self._outage += 1
            pause = backoff_seconds(self._outage, self._backoff_max_s)
            self._pause_until = max(self._pause_until, time.monotonic() + pause)
            return pause

    def _outage_over(self) -> None:
        with self._pause_lock:
            if self._outage:
                logger.info("the model server answers again; tagging resumes")
            self._outage = 0
