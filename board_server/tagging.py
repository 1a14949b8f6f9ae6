"""The tagging worker: background threads in each board server process that send PENDING attachments (then
queued re-tags) to TorchServe over gRPC (clients/segment.py, with the inference key) and store labels, mask
and the model's identity.

Nothing is lost when the model server is slow, down or restarting: the upload is already committed. Each
attachment is claimed with a lease and a fresh claim token (board_server/tagging_queue.py), so one worker of
one process of one replica tags it, and only that claim can store an outcome; a process that dies mid-call
leaves a lease that expires, and any worker resumes the work.

Every outcome of the call is classified (``classify``), and the attachment's fate follows:

| outcome | kind | what happens |
| --- | --- | --- |
| answer | ok | labels, mask and model identity stored, TAGGED |
| image rejected (400/413/415) | rejected | FAILED at once with the model's reason |
| malformed answer | bad_answer | FAILED at once (the same image gets the same answer) |
| timeout | timeout | retried with backoff, FAILED after ``max_attempts`` |
| worker died mid-request, 5xx/INTERNAL | server_error | retried with backoff, FAILED after ``max_attempts`` |
| call cancelled (not for its size) | cancelled | retried with backoff, FAILED after ``max_attempts`` |
| handler failed before answering | unavailable | retried with backoff, FAILED after ``max_attempts`` |
| unreachable, no worker, no such model | unavailable | the worker pauses (growing), attempt given back |
| key missing, wrong or expired | auth | logged as an error, the worker pauses, attempt given back |

An attempt given back never brings the attachment nearer to FAILED: nothing was learned about the image, and
an outage of any length ends with the work done. A claim whose earlier leases all expired without an outcome
(an image that kills the process?) is FAILED once its attempts pass ``max_attempts``. Storing an outcome is
retried with backoff and logged on every failure until the lease runs out; the next claim redoes the work.

Woken at once by an upload in this process, and every ``poll_s`` for work uploaded through others.
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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from sqlalchemy import Connection

from board_server import tagging_queue as queue
from board_server import tracing
from board_server.config import Settings
from board_server.database import Database
from clients.segment import (
    Segmentation,
    SegmentAuthError,
    SegmentBadAnswerError,
    SegmentCancelledError,
    SegmentClient,
    SegmentError,
    SegmentRejectedError,
    SegmentServerError,
    SegmentTimeoutError,
    SegmentUnavailableError,
    SegmentWorkerDiedError,
    ServingEndpoints,
    TokenSource,
)

logger = logging.getLogger(__name__)

BASE_BACKOFF_S = 0.5
_SCAN = 8
_REASON_MAX = 900  # failure_reason holds 1000 characters

# Image bytes → what the model found; raises clients.segment's errors.
Segmenter = Callable[[bytes], Segmentation]


class TaggingObserver(Protocol):
    """What the worker reports as it goes, for metrics. Every method must return quickly and never raise."""

    def call_outcome(self, kind: str) -> None:
        """One segmentation call ended: ok, rejected, bad_answer, timeout, server_error, cancelled,
        unavailable or auth."""

    def retried(self) -> None:
        """An attachment was rescheduled for another attempt."""

    def lease_expired(self) -> None:
        """A claim took over work whose previous lease had expired without an outcome."""

    def tagged(self, seconds_since_upload: float) -> None:
        """An upload was TAGGED (re-tags are not counted), this long after it was stored."""


class NoObserver:
    """The default observer: reports nothing."""

    def call_outcome(self, kind: str) -> None:
        pass

    def retried(self) -> None:
        pass

    def lease_expired(self) -> None:
        pass

    def tagged(self, seconds_since_upload: float) -> None:
        pass


@dataclass(frozen=True)
class Verdict:
    """What a failed call means for the attachment.

    ``action``: ``fail`` now; ``retry`` later, the attempt counted; ``pause`` the whole worker and retry, the
    attempt given back (the model server is unusable for every image alike).
    """

    kind: str
    action: Literal["fail", "retry", "pause"]
    reason: str


# In order: the first matching class decides (subclasses before their bases).
_VERDICTS: tuple[tuple[type[Exception], str, Literal["fail", "retry", "pause"], str], ...] = (
    (SegmentBadAnswerError, "bad_answer", "fail", "malformed answer from the model server: "),
    (SegmentAuthError, "auth", "pause", "the model server refused our key: "),
    (SegmentTimeoutError, "timeout", "retry", "timeout: "),
    (SegmentWorkerDiedError, "server_error", "retry", "the model server's worker died during the call: "),
    (SegmentCancelledError, "cancelled", "retry", "the call was cancelled: "),
    (SegmentServerError, "server_error", "retry", "model server error "),
)


def classify(exc: BaseException) -> Verdict:
    """The verdict on a segmentation call that raised ``exc`` (see the table in the module docstring)."""
    if isinstance(exc, SegmentRejectedError):
        return Verdict("rejected", "fail", f"rejected by the model ({exc.status} {exc.code}): {exc.message}")
    if isinstance(exc, SegmentUnavailableError):
        if exc.reached:
            return Verdict("unavailable", "retry", f"the model server failed on the image: {exc}")
        return Verdict("unavailable", "pause", f"the model server is unavailable: {exc}")
    for error_type, kind, action, prefix in _VERDICTS:
        if isinstance(exc, error_type):
            return Verdict(kind, action, f"{prefix}{exc}")
    return Verdict("server_error", "retry", f"{type(exc).__name__}: {exc}")


def backoff_seconds(attempt: int, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half of min(cap, base·2^(attempt-1)) plus a random half."""
    ceiling = min(cap, BASE_BACKOFF_S * 2 ** max(0, min(attempt - 1, 30)))
    return float(ceiling / 2 + (rng or random).uniform(0, ceiling / 2))


def _now() -> datetime:
    return datetime.now(UTC)


def _short(reason: str) -> str:
    return reason if len(reason) <= _REASON_MAX else reason[: _REASON_MAX - 1] + "…"


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
        observer: TaggingObserver | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        # For people reading the table; the claim token, not this id, fences the writes.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._db = db
        self._segment = segment
        self._threads_wanted = threads
        self._poll_s = poll_s
        self._lease_s = lease_s
        self._backoff_max_s = backoff_max_s
        self._max_attempts = max_attempts
        self._on_close = on_close
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
        if self._on_close is not None:
            self._on_close()

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
        with tracing.span("tag attachment", traceparent=claim.traceparent, **attributes):
            tracing.recorded_span("claim", asked_ns, time.time_ns(), worker=self.worker_id)
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
            answer = self._segment(image)
        except Exception as exc:
            self._call_failed(claim, lease_end, exc)
            return
        self._observer.call_outcome("ok")
        self._outage_over()
        model = answer.model
        result = queue.TagResult(
            labels=[(c.name, float(c.fraction), int(c.pixels)) for c in answer.classes],
            mask_png=answer.mask_png,
            arch=str(model.get("arch") or "unknown"),
            weights=str(model.get("weights") or "unknown"),
            sha256=str(model["sha256"]) if model.get("sha256") else None,
            untrained=bool(model.get("untrained", True)),
            archive_sha256=str(model["archive_sha256"]) if model.get("archive_sha256") else None,
        )
        token = claim.token
        with tracing.span("store", labels=len(result.labels)):
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
        self._observer.call_outcome(verdict.kind)
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
                    "renewing TorchServe's keys runs (seg_handler.launch).",
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


def make_segment_client(settings: Settings) -> SegmentClient:
    """A SegmentClient for TorchServe's gRPC inference API of ``settings`` (tagging, describe)."""
    endpoints = ServingEndpoints(
        inference_url="",
        management_url="",
        grpc_inference_target=settings.segmentation_target,
        model_name=settings.segmentation_model,
    )
    token_file = settings.segmentation_token_file
    tokens = TokenSource.from_key_file(token_file) if token_file else TokenSource()
    return SegmentClient(
        endpoints,
        tokens,
        timeout_s=settings.segmentation_timeout_s,
        # Reconnect within ~2 s after TorchServe comes back (gRPC's default backoff grows to 120 s).
        channel_options=[("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)],
    )


def build_tagging_worker(
    settings: Settings,
    db: Database,
    *,
    observer: TaggingObserver | None = None,
    on_change: Callable[[], None] | None = None,
) -> TaggingWorker | None:
    """The worker for ``settings``, or None (logged loudly) when no segmentation target is configured."""
    if not settings.segmentation_target:
        logger.warning(
            "TAGGING IS OFF: BOARD_SEGMENTATION_TARGET (--segmentation-target) is not set; attachments are "
            "stored and stay PENDING until a board server with a target runs"
        )
        return None
    client = make_segment_client(settings)
    token_file = settings.segmentation_token_file

    def segment(image: bytes) -> Segmentation:
        return client.segment(image, transport="grpc")

    lease_s = settings.tagging_lease_seconds
    logger.info(
        "tagging via TorchServe gRPC %s model %r (key file %s, timeout %.0fs, lease %.0fs, %d attempts)",
        settings.segmentation_target,
        settings.segmentation_model,
        token_file or "none",
        settings.segmentation_timeout_s,
        lease_s,
        settings.tagging_max_attempts,
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
        observer=observer,
        on_change=on_change,
    )
