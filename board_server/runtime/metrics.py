"""Prometheus metrics of the board on ``--metrics-address`` (default 127.0.0.1:9464, ``none`` turns them off).

Names gRPC users already know (go-grpc-prometheus / py-grpc-prometheus):

    grpc_server_started_total{grpc_type,grpc_service,grpc_method,protocol}
    grpc_server_handled_total{grpc_type,grpc_service,grpc_method,protocol,grpc_code}
    grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method,protocol}         histogram

``protocol`` says what carried the call: ``grpc``, or on the HTTP listener ``connect``, ``grpc-web`` and
``http`` (the browser's upload).

and the board's own: ``board_attachments{status}`` (counted in the database at every scrape, so each
replica reports the same truth), ``board_tagging_queue`` (uploads waiting + re-tags queued),
``board_tagging_latency_seconds`` (upload → TAGGED), ``board_torchserve_calls_total{outcome,target}``
(tagging calls to the model server, whatever its protocol, by outcome: ok, rejected, unavailable, timeout,
auth, server_error, bad_answer, ...; and by the server's address), ``board_tagging_retries_total``,
``board_tagging_lease_expiries_total``, ``board_db_connections_in_use``, ``board_group_commit_batch_size``,
``board_watchers``.

Several server processes: prometheus-client's multiprocess mode. The supervisor points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before it starts them, every process writes its samples
there (memory-mapped files), and the supervisor alone serves /metrics, summing them (gauges: live sum).
One process: an ordinary registry served from that process.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from board_server.core.records import AttachmentStatus
from board_server.storage.attachments import status_counts
from board_server.storage.engine import Database

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TAGGING_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
FLUSH_EVERY_S = 1.0
IDLE_FLUSH_S = 0.05


def _grpc_type(method: str) -> str:
    return "server_stream" if method == "WatchAttachment" else "unary"


class BoardMetrics:
    """Every metric a server process records; a CallObserver, TaggingObserver and commit-batch observer."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        # protocol: grpc, or what carried the call to the HTTP listener (connect, grpc-web, http).
        labels = ("grpc_type", "grpc_service", "grpc_method", "protocol")
        self.started_total = Counter(
            "grpc_server_started_total", "RPCs started on the server.", labels, registry=registry
        )
        self.handled_total = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.torchserve_calls = Counter(
            "board_torchserve_calls_total",
            "Segmentation calls to the model server by outcome and server address.",
            ("outcome", "target"),
            registry=registry,
        )
        self.tagging_retries = Counter(
            "board_tagging_retries_total",
            "Tagging attempts rescheduled after a transient failure.",
            registry=registry,
        )
        self.lease_expiries = Counter(
            "board_tagging_lease_expiries_total",
            "Claims whose lease ran out before their result was stored.",
            registry=registry,
        )
        self.tagging_latency = Histogram(
            "board_tagging_latency_seconds",
            "Time from upload to TAGGED.",
            buckets=_TAGGING_BUCKETS,
            registry=registry,
        )
        self.connections_in_use = Gauge(
            "board_db_connections_in_use",
            "Database connections checked out of the pool.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.commit_batch = Histogram(
            "board_group_commit_batch_size",
            "Writes committed together by one SQLite group commit (one fsync).",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.watchers = Gauge(
            "board_watchers", "Open WatchAttachment streams.", registry=registry, multiprocess_mode="livesum"
        )
        # Calls are counted in plain dicts and written to the metrics above in one go (``flush``): each write
        # of a sample takes a lock and, with several processes, a memory-mapped file (four per call cost
        # GetPost 5.5 % of its throughput). Written when a call ends FLUSH_EVERY_S after the last write,
        # IDLE_FLUSH_S after the process last had no call in progress (so a scrape after a few calls sees
        # them: under load a process is idle between calls many times a second, and a write each time cost
        # more than writing per call), and by the health loop. Only the event loop calls these.
        self._started: dict[tuple[str, str, str], int] = {}
        self._handled: dict[tuple[str, str, str, str], int] = {}
        # Per (service, method, protocol): [sum of seconds, count per bucket (the last: +Inf)].
        self._latencies: dict[tuple[str, str, str], list[float]] = {}
        self._in_flight = 0
        self._next_flush = 0.0
        self._idle_flush: asyncio.TimerHandle | None = None

    # --- CallObserver ---------------------------------------------------------------------------------

    def started(self, service: str, method: str, *, protocol: str = "grpc") -> None:
        key = (service, method, protocol)
        self._started[key] = self._started.get(key, 0) + 1
        self._in_flight += 1

    def handled(
        self, service: str, method: str, code: grpc.StatusCode, seconds: float, *, protocol: str = "grpc"
    ) -> None:
        call, key = (service, method, protocol), (service, method, protocol, code.name)
        self._handled[key] = self._handled.get(key, 0) + 1
        latency = self._latencies.get(call)
        if latency is None:
            latency = self._latencies[call] = [0.0] * (len(_LATENCY_BUCKETS) + 2)
        latency[0] += seconds
        latency[1 + bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self._in_flight -= 1
        if time.monotonic() >= self._next_flush:
            self.flush()
        elif self._in_flight <= 0 and self._idle_flush is None:
            self._idle_flush = asyncio.get_running_loop().call_later(IDLE_FLUSH_S, self.flush)

    def flush(self) -> None:
        """Write the calls counted since the last flush to the metrics."""
        if self._idle_flush is not None:
            self._idle_flush.cancel()
            self._idle_flush = None
        started, handled, latencies = self._started, self._handled, self._latencies
        self._started, self._handled, self._latencies = {}, {}, {}
        self._next_flush = time.monotonic() + FLUSH_EVERY_S
        for (service, method, protocol), count in started.items():
            self.started_total.labels(_grpc_type(method), service, method, protocol).inc(count)
        for (service, method, protocol, code), count in handled.items():
            self.handled_total.labels(_grpc_type(method), service, method, protocol, code).inc(count)
        for (service, method, protocol), latency in latencies.items():
            # What Histogram.observe does per value (its sum, and the first bucket the value fits), per batch.
            child = self.handling_seconds.labels(_grpc_type(method), service, method, protocol)
            child._sum.inc(latency[0])
            for bucket, observed in zip(child._buckets, latency[1:], strict=True):
                if observed:
                    bucket.inc(observed)

    # --- TaggingObserver -----------------------------------------------------------------------------

    def call_outcome(self, kind: str, target: str) -> None:
        self.torchserve_calls.labels(kind, target).inc()

    def retried(self) -> None:
        self.tagging_retries.inc()

    def lease_expired(self) -> None:
        self.lease_expiries.inc()

    def tagged(self, seconds_since_upload: float) -> None:
        self.tagging_latency.observe(seconds_since_upload)

    # --- the rest --------------------------------------------------------------------------------------

    def committed(self, batch_size: int) -> None:
        self.commit_batch.observe(batch_size)


class DatabaseCollector(Collector):
    """Gauges counted in the database at scrape time: attachments by status, the tagging queue."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def collect(self) -> Iterable[Metric]:
        try:
            counts, retags = self._db.query(status_counts)
        except Exception:
            logger.warning("metrics: the database could not be counted", exc_info=True)
            return
        by_status = GaugeMetricFamily(
            "board_attachments", "Attachments by tagging status.", labels=["status"]
        )
        for status in AttachmentStatus:
            by_status.add_metric([status.value], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily(
            "board_tagging_queue",
            "Attachments waiting for the tagging worker (uploads PENDING plus re-tags queued).",
            value=counts.get(AttachmentStatus.PENDING, 0) + retags,
        )


def prepare_multiprocess_dir() -> str:
    """A fresh folder for the server processes' samples; set in the environment they inherit."""
    path = tempfile.mkdtemp(prefix="board-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_multiprocess_dir(path: str) -> None:
    os.environ.pop(MULTIPROC_ENV, None)
    shutil.rmtree(path, ignore_errors=True)


def mark_process_dead(pid: int) -> None:
    """Drop a dead server process's live gauges (its counters and histograms stay in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve_metrics(address: str, registry: CollectorRegistry, db: Database) -> Any:
    """Serve ``registry`` plus the database gauges as /metrics on ``address``; return the HTTP server."""
    registry.register(DatabaseCollector(db))
    host, port = address.rsplit(":", 1)
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    logger.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server


def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry summing the samples that every server process writes under ``path``."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry
