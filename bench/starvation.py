"""Starvation bench: p99 of GetPost and Health.Check from one client while others hold the board's streams.

The abusers speak HTTP/2 by hand (the ``h2`` library over plain sockets), because a gRPC client library
would not leave a call half-done on purpose:

- **idle streams**: ``ServerReflectionInfo`` (bidirectional) opened with HEADERS and then nothing: no
  message, no END_STREAM, one connection each;
- **half-sent uploads**: ``AddAttachment`` whose gRPC frame announces a multi-MB message and whose DATA
  stops part-way (a slow phone on a bad network), one connection each.

A background thread keeps every abusive connection alive the way a real client would (answers PINGs and
SETTINGS, takes WINDOW_UPDATEs) and records what the server did to each stream (RST_STREAM, trailers,
GOAWAY), so that a run can show the streams were still open when it was measured.

Every run measures the other client twice, without and then with the abusers (the order alternates from run
to run), each time ``--calls`` GetPost and ``--calls`` Health.Check calls, interleaved, one at a time; the
figures are p50/p99 in milliseconds per run, with the median and min–max over ``--runs`` runs
(bench/records.py), written to bench/results/starvation.json.

    python -m bench.starvation                   # the record: 5 runs, 32 idle + 8 half-sent, 1 process
    python -m bench.starvation --runs 1 --calls 50 --out /tmp/s.json   # a trial
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import selectors
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.records import load_average, summarize, write_results
from bench.seeding import seed
from bench.servers import board_executable, clean_env, limit_flags, limits_record, running
from seg_handler.launcher.processes import wait_for

logger = logging.getLogger("bench.starvation")

REFLECTION_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
UPLOAD_METHOD = "/board.v1.BoardService/AddAttachment"
ANNOUNCED_UPLOAD_BYTES = 8 * 1024 * 1024
SENT_UPLOAD_BYTES = 1024 * 1024


# --- raw HTTP/2 gRPC streams -------------------------------------------------------------------------------


class _Connection(h2.connection.H2Connection):
    """h2's client connection; ``ignore_stream_limit`` lets it open streams beyond the server's
    SETTINGS_MAX_CONCURRENT_STREAMS, as a hostile client would."""

    ignore_stream_limit = False

    @property
    def open_outbound_streams(self) -> int:
        count: int = super().open_outbound_streams
        return 0 if self.ignore_stream_limit else count


@dataclass
class RawStream:
    """One gRPC call opened by hand, and what the server has done to it so far."""

    stream_id: int
    method: str
    sent: int = 0
    reset_code: int | None = None  # the error code of the server's RST_STREAM
    grpc_status: str | None = None  # from the server's trailers (or a trailers-only answer)
    grpc_message: str = ""
    ended: bool = False  # the server ended its side

    @property
    def open(self) -> bool:
        return self.reset_code is None and not self.ended


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def grpc_frame_prefix(length: int) -> bytes:
    """The 5-byte gRPC message prefix: not compressed, then the message length (big-endian)."""
    return b"\x00" + length.to_bytes(4, "big")


class RawGrpcConnection:
    """One HTTP/2 connection to a gRPC server on which streams are opened and fed by hand.

    Thread-safe: every h2 operation holds the connection's lock (a pump thread may service it meanwhile).
    """

    def __init__(self, target: str, *, ignore_stream_limit: bool = False, timeout: float = 10.0) -> None:
        host, port = target.rsplit(":", 1)
        self.authority = target
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = _Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.ignore_stream_limit = ignore_stream_limit
        self.streams: dict[int, RawStream] = {}
        self.goaway: int | None = None  # the error code of the server's GOAWAY
        self.closed = False
        self._lock = threading.RLock()
        self._pending: dict[int, bytes] = {}  # data still to send per stream, as the windows allow
        with self._lock:
            self.conn.initiate_connection()
            self._flush()

    @property
    def remote_max_concurrent_streams(self) -> int:
        return int(self.conn.remote_settings.max_concurrent_streams)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def open_stream(self, method: str, metadata: Sequence[tuple[str, str]] = ()) -> RawStream:
        """Send HEADERS of a gRPC call (no END_STREAM): the call is open and waits for its messages."""
        with self._lock:
            stream_id = self.conn.get_next_available_stream_id()
            headers = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", self.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *metadata,
            ]
            self.conn.send_headers(stream_id, headers)
            self._flush()
            stream = RawStream(stream_id, method)
            self.streams[stream_id] = stream
            return stream

    def send_partial(self, stream: RawStream, data: bytes) -> None:
        """Queue ``data`` on ``stream`` (never END_STREAM); it goes out as the flow-control windows open."""
        with self._lock:
            self._pending[stream.stream_id] = self._pending.get(stream.stream_id, b"") + data
            self._send_pending()

    def _send_pending(self) -> None:
        for stream_id, queued in list(self._pending.items()):
            stream, data = self.streams[stream_id], queued
            while data and stream.open:
                try:
                    window = self.conn.local_flow_control_window(stream_id)
                except h2.exceptions.StreamClosedError:
                    break
                chunk = min(window, self.conn.max_outbound_frame_size, len(data))
                if chunk <= 0:
                    break
                self.conn.send_data(stream_id, data[:chunk])
                stream.sent += chunk
                data = data[chunk:]
            if data and stream.open:
                self._pending[stream_id] = data
            else:
                self._pending.pop(stream_id, None)
        self._flush()

    def ping(self, count: int = 1) -> None:
        """Send ``count`` PING frames at once (a client that pings too often, for keepalive enforcement)."""
        with self._lock:
            for i in range(count):
                self.conn.ping(i.to_bytes(8, "big"))
            self._flush()

    def reset(self, stream: RawStream) -> None:
        """Cancel ``stream`` (RST_STREAM CANCEL), as a client giving up would."""
        with self._lock:
            if stream.open:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.conn.reset_stream(stream.stream_id, h2.errors.ErrorCodes.CANCEL)
                stream.ended = True
                self._flush()

    def receive(self) -> None:
        """Read what the server sent (the socket must be readable) and act on it; closed on EOF."""
        with self._lock:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            for event in self.conn.receive_data(data):
                self._on_event(event)
            self._send_pending()

    def _on_event(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.reset_code = int(event.error_code)
        elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived) and stream:
            # header_encoding="utf-8" makes h2 hand over str; bytes are decoded for the type checker.
            headers = {_text(name): _text(value) for name, value in event.headers}
            stream.grpc_status = headers.get("grpc-status", stream.grpc_status)
            stream.grpc_message = headers.get("grpc-message", stream.grpc_message)
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended = True
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = int(event.error_code) if event.error_code is not None else 0

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Receive from the server until ``predicate()`` holds (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    return predicate()
                if selector.select(timeout=min(remaining, 0.2)):
                    self.receive()
        return True

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(Exception):
                self.conn.close_connection()
                self._flush()
            self.sock.close()
            self.closed = True


def half_sent_upload(post_id: int, announced: int = ANNOUNCED_UPLOAD_BYTES) -> bytes:
    """A gRPC-framed AddAttachmentRequest of ``announced`` bytes (a JPEG header, then padding)."""
    from clients.gen.board.v1 import board_pb2

    head = b"\xff\xd8\xff\xe0" + b"\x00" * 16
    request = board_pb2.AddAttachmentRequest(post_id=post_id, filename="slow.jpg", data=head)
    size = len(request.SerializeToString())
    # Grow the data until the whole message is exactly ``announced`` bytes (the varint length may grow).
    padding = announced - size
    while True:
        request.data = head + b"\x00" * padding
        size = len(request.SerializeToString())
        if size == announced:
            break
        padding += announced - size
    return grpc_frame_prefix(announced) + request.SerializeToString()


@dataclass
class Abusers:
    """Idle streams and half-sent uploads held open against one server, pumped by a background thread."""

    target: str
    idle: int
    slow: int
    post_id: int
    metadata: Sequence[tuple[str, str]] = ()
    sent_upload_bytes: int = SENT_UPLOAD_BYTES
    connections: list[RawGrpcConnection] = field(default_factory=list)
    idle_streams: list[RawStream] = field(default_factory=list)
    uploads: list[RawStream] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _added: list[RawGrpcConnection] = field(default_factory=list)  # for the pump to register
    _added_lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Open every connection and stream, then pump them in the background until ``stop``."""
        upload = half_sent_upload(self.post_id)[: self.sent_upload_bytes]
        for _ in range(self.idle):
            self._open_idle()
        for _ in range(self.slow):
            connection = RawGrpcConnection(self.target)
            self.connections.append(connection)
            stream = connection.open_stream(UPLOAD_METHOD, self.metadata)
            self.uploads.append(stream)
            connection.send_partial(stream, upload)
        self._thread = threading.Thread(target=self._pump, name="abusers", daemon=True)
        self._thread.start()

    def _open_idle(self) -> RawGrpcConnection:
        connection = RawGrpcConnection(self.target)
        self.connections.append(connection)
        self.idle_streams.append(connection.open_stream(REFLECTION_METHOD))
        return connection

    def add_idle(self) -> None:
        """One more idle stream on a new connection, while the abusers run (the pump picks it up)."""
        connection = self._open_idle()
        with self._added_lock:
            self._added.append(connection)

    def _pump(self) -> None:
        with selectors.DefaultSelector() as selector:
            for connection in self.connections:
                selector.register(connection.sock, selectors.EVENT_READ, connection)
            while not self._stop.is_set():
                with self._added_lock:
                    added, self._added = self._added, []
                for connection in added:
                    with contextlib.suppress(KeyError):  # registered at the start already
                        selector.register(connection.sock, selectors.EVENT_READ, connection)
                for key, _ in selector.select(timeout=0.2):
                    connection = key.data
                    connection.receive()
                    if connection.closed:
                        selector.unregister(connection.sock)

    def uploads_sent(self) -> bool:
        """True once every upload has sent all it is going to send (its partial message)."""
        return all(s.sent >= self.sent_upload_bytes for s in self.uploads)

    def open_streams(self) -> int:
        """Streams the server has neither reset nor ended, on connections it has not closed."""
        return sum(
            1
            for connection in self.connections
            if not connection.closed and connection.goaway is None
            for stream in connection.streams.values()
            if stream.open
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for connection in self.connections:
            connection.close()

    def __enter__(self) -> Abusers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the other client --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def measure_other_client(
    target: str, post_ids: Sequence[int], calls: int, timeout: float = 30.0
) -> dict[str, dict[str, float]]:
    """``calls`` GetPost and ``calls`` Health.Check, interleaved, one at a time, on a fresh channel; p50/p99
    in milliseconds. Raises grpc.RpcError when a call fails (a starved call fails on its deadline)."""
    from clients.gen.board.v1 import board_pb2, board_pb2_grpc

    latencies: dict[str, list[float]] = {"GetPost": [], "Health.Check": []}
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(target, options=options) as channel:
        board = board_pb2_grpc.BoardServiceStub(channel)  # type: ignore[no-untyped-call]
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)  # connect outside the figures
        for i in range(calls):
            started = time.perf_counter()
            board.GetPost(board_pb2.GetPostRequest(id=post_ids[i % len(post_ids)]), timeout=timeout)
            latencies["GetPost"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(service="board.v1.BoardService"), timeout=timeout)
            latencies["Health.Check"].append((time.perf_counter() - started) * 1000)
    return {
        name: {"p50_ms": round(percentile(v, 0.50), 3), "p99_ms": round(percentile(v, 0.99), 3)}
        for name, v in latencies.items()
    }


def abused_run(
    target: str, seeded: Any, args: argparse.Namespace
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """One measurement with the abusers open; also how many of their streams were open before and after."""
    with Abusers(target, args.idle, args.slow, seeded.post_ids[0], seeded.metadata) as abusers:
        wait_for("the half-sent uploads to send their part", abusers.uploads_sent, timeout=60, interval=0.05)
        before = abusers.open_streams()
        figures = measure_other_client(target, seeded.post_ids, args.calls)
        after = abusers.open_streams()
    return figures, {"open_before": before, "open_after": after}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.starvation", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs, each without and with abusers (>= 3)")
    parser.add_argument("--calls", type=int, default=2000, help="calls of each RPC per measurement")
    parser.add_argument("--idle", type=int, default=32, help="idle reflection streams")
    parser.add_argument("--slow", type=int, default=8, help="half-sent uploads")
    parser.add_argument("--processes", type=int, default=1, help="board server processes")
    parser.add_argument("--out", type=Path, default=None, help="results file (default bench/results/)")
    return parser


def _cells(runs: Sequence[dict[str, Any]], phase: str) -> dict[str, Any]:
    return {
        rpc: {figure: summarize([run[phase][rpc][figure] for run in runs]) for figure in ("p50_ms", "p99_ms")}
        for rpc in ("GetPost", "Health.Check")
    }


P99_LIMIT_MS = 1000.0  # the hardening issue: the other client's p99 under 1 s with the abusers open


def targets(abused: dict[str, Any]) -> dict[str, Any]:
    """The other client's p99 with the abusers open (median of the runs) against P99_LIMIT_MS."""
    found = {}
    for rpc, cell in abused.items():
        p99 = cell["p99_ms"]["median"]
        found[f"{rpc} p99 ms, abusers open"] = {"value": p99, "max": P99_LIMIT_MS, "met": p99 < P99_LIMIT_MS}
    return found


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-starvation-") as tmp:
        work = Path(tmp)
        command = [
            str(board_executable()), "--address", "127.0.0.1:0", "--http-address", "none",
            "--database-url", f"sqlite:///{work / 'board.db'}", "--audit-log", str(work / "audit.log"),
            "--processes", str(args.processes), "--metrics-address", "none", "--grace", "2", *limit_flags(),
        ]  # fmt: skip
        with running("board", command, work, clean_env()) as server:
            seeded = seed(server.target, 100)
            measure_other_client(server.target, seeded.post_ids, 50)  # warm-up, not recorded
            runs: list[dict[str, Any]] = []
            for index in range(args.runs):
                run: dict[str, Any] = {}
                # Alternate the order, so that drift in the machine's load weighs on both phases.
                for phase in ("quiet", "abused") if index % 2 == 0 else ("abused", "quiet"):
                    if phase == "quiet":
                        run["quiet"] = measure_other_client(server.target, seeded.post_ids, args.calls)
                    else:
                        run["abused"], run["abuser_streams"] = abused_run(server.target, seeded, args)
                    server.check_alive()
                logger.info("run %d: %s", index + 1, run)
                runs.append(run)
    cells = {phase: _cells(runs, phase) for phase in ("quiet", "abused")}
    payload = {
        "setup": {
            "limits": limits_record(),
            "idle_streams": args.idle,
            "half_sent_uploads": args.slow,
            "announced_upload_bytes": ANNOUNCED_UPLOAD_BYTES,
            "sent_upload_bytes": SENT_UPLOAD_BYTES,
            "calls_per_rpc": args.calls,
            "processes": args.processes,
            "database": "sqlite",
            "client": "one grpc Python channel, calls one at a time, GetPost and Health.Check interleaved",
        },
        **cells,
        "targets": targets(cells["abused"]),
        "runs": runs,
    }
    path = write_results("starvation", payload, load_before=load_before, out=args.out)
    for phase in ("quiet", "abused"):
        for rpc, cell in cells[phase].items():
            p99 = cell["p99_ms"]
            print(f"{phase:7} {rpc:13} p99 {p99['median']:.2f} ms ({p99['min']:.2f}-{p99['max']:.2f})")
    print(f"load average before {load_before}, written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
