"""Board benchmark: the board server against an empty gRPC echo server (the floor), measured in one run.

Both servers are real subprocesses with the same gRPC configuration (thread pool of the same size, same
channel options). For GetPost, ListPosts (page of 50) and CreatePost, at concurrency 1 and 16, we report
requests per second, p50 and p99 latency, and the board's rps as a fraction of the floor's rps for the same
request bytes. The floor is also measured on a grpc.aio echo server, to show what the asyncio model would
give at best. Figures go to stdout and to bench/results/board.json.

    python -m bench.board [--seconds 3] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

logger = logging.getLogger("bench.board")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "board.json"
ECHO_METHOD = "/bench.v1.Echo/Echo"
LISTENING = re.compile(r"listening on (\S+):(\d+)")
CONCURRENCY = (1, 16)
OPERATIONS = ("GetPost", "ListPosts", "CreatePost")
TARGETS = {"GetPost": 0.5, "CreatePost": 0.25}

CallFactory = Callable[[grpc.Channel], Callable[[], object]]


# --- the echo floor ----------------------------------------------------------------------------------------


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def serve_echo(workers: int, use_aio: bool) -> None:
    """Run the echo server (same options as the board's) until SIGTERM; log its port like the board does."""
    from board_server.config import Settings
    from board_server.server import server_options

    options = server_options(Settings(worker_threads=workers))
    handler = grpc.method_handlers_generic_handler(
        "bench.v1.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    if use_aio:
        asyncio.run(_serve_echo_aio(options))
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    logger.info("listening on 127.0.0.1:%d", port)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    stopping.wait()
    server.stop(1).wait()


async def _serve_echo_aio(options: list[tuple[str, Any]]) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.v1.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    logger.info("listening on 127.0.0.1:%d", port)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    await server.stop(1)


# --- servers as subprocesses -------------------------------------------------------------------------------


@contextmanager
def subprocess_server(args: Sequence[str], log_path: Path) -> Iterator[str]:
    """Start a server that logs 'listening on HOST:PORT'; yield its target; stop it by pid."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (match := LISTENING.search(log_path.read_text(errors="replace"))):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {args[0]} did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        yield f"127.0.0.1:{match.group(2)}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- load ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    server: str
    operation: str
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


@dataclass
class _Samples:
    latencies: list[float]
    errors: int = 0
    elapsed: float = 0.0


def _load(calls: Sequence[Callable[[], object]], seconds: float, samples: _Samples) -> None:
    """Closed loop: one thread per call keeps calling for ``seconds``; add what it saw to ``samples``."""
    per_thread: list[list[float]] = [[] for _ in calls]
    errors = [0] * len(calls)
    start_line = threading.Barrier(len(calls) + 1)
    stop_at = [0.0]

    def caller(i: int) -> None:
        call, mine = calls[i], per_thread[i]
        start_line.wait()
        while (now := time.perf_counter()) < stop_at[0]:
            try:
                call()
            except grpc.RpcError:
                errors[i] += 1
            mine.append(time.perf_counter() - now)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start_line.wait()
    for thread in threads:
        thread.join()
    samples.elapsed += time.perf_counter() - began
    samples.errors += sum(errors)
    for part in per_thread:
        samples.latencies.extend(part)


@dataclass(frozen=True)
class Contender:
    server: str
    target: str
    make_call: CallFactory


def measure(
    contenders: Sequence[Contender], operation: str, concurrency: int, seconds: float, rounds: int = 3
) -> list[Cell]:
    """Measure each contender for ``seconds`` in total, interleaved in ``rounds`` slices, so that load from
    elsewhere on the machine weighs on the floor and the board alike. One channel per caller."""
    channels = {c.server: [grpc.insecure_channel(c.target) for _ in range(concurrency)] for c in contenders}
    calls = {c.server: [c.make_call(channel) for channel in channels[c.server]] for c in contenders}
    for server_calls in calls.values():
        for call in server_calls:
            for _ in range(5):
                call()  # warm-up: connections, caches
    samples = {c.server: _Samples([]) for c in contenders}
    for _ in range(rounds):
        for contender in contenders:
            _load(calls[contender.server], seconds / rounds, samples[contender.server])
    for server_channels in channels.values():
        for channel in server_channels:
            channel.close()
    cells = []
    for contender in contenders:
        got = samples[contender.server]
        merged = sorted(got.latencies)
        quantiles = statistics.quantiles(merged, n=100) if len(merged) >= 2 else [0.0] * 99
        cells.append(
            Cell(
                server=contender.server,
                operation=operation,
                concurrency=concurrency,
                requests=len(merged),
                errors=got.errors,
                rps=len(merged) / got.elapsed,
                p50_ms=quantiles[49] * 1000,
                p99_ms=quantiles[98] * 1000,
            )
        )
    return cells


def board_calls(seed_user: int, seed_posts: Sequence[int]) -> dict[str, tuple[bytes, CallFactory]]:
    """For each operation: the request bytes (also sent to the echo floor) and a per-channel call factory."""
    from clients.gen.board.v1 import board_pb2, board_pb2_grpc

    requests = {
        "GetPost": board_pb2.GetPostRequest(id=seed_posts[len(seed_posts) // 2]),
        "ListPosts": board_pb2.ListPostsRequest(user_id=seed_user, page_size=50),
        "CreatePost": board_pb2.CreatePostRequest(user_id=seed_user, title="bench", content="x" * 200),
    }

    def factory(operation: str) -> CallFactory:
        request = requests[operation]

        def make(channel: grpc.Channel) -> Callable[[], object]:
            method = getattr(board_pb2_grpc.BoardServiceStub(channel), operation)  # type: ignore[no-untyped-call]
            return lambda: method(request, timeout=30)

        return make

    return {name: (request.SerializeToString(), factory(name)) for name, request in requests.items()}


def echo_call(payload: bytes) -> CallFactory:
    def make(channel: grpc.Channel) -> Callable[[], object]:
        method = channel.unary_unary(ECHO_METHOD, None, None)
        return lambda: method(payload, timeout=30)

    return make


def seed(target: str, posts: int) -> tuple[int, list[int]]:
    from clients.board import BoardClient

    with BoardClient(target, timeout=30) as client:
        user = client.create_user("Bench", f"bench-{os.getpid()}-{time.time_ns()}@example.org")
        ids = [client.create_post(user.id, f"post {i}", "y" * 200).id for i in range(posts)]
    return user.id, ids


def run(seconds: float, workers: int, database_url: str | None, operations: Sequence[str]) -> dict[str, Any]:
    """Measure every cell; return the figures (also used for the JSON file)."""
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="board-bench-") as tmp:
        work = Path(tmp)
        url = database_url or f"sqlite:///{work / 'bench.db'}"
        board_cmd = [
            sys.executable, "-m", "board_server", "--address", "127.0.0.1:0", "--database-url", url,
            "--audit-log", str(work / "audit.log"), "--workers", str(workers),
        ]  # fmt: skip
        echo_cmd = [sys.executable, "-m", "bench.board", "--serve-echo", "--workers", str(workers)]
        with (
            subprocess_server(board_cmd, work / "board.log") as board,
            subprocess_server(echo_cmd, work / "echo.log") as echo,
            subprocess_server([*echo_cmd, "--aio"], work / "echo-aio.log") as echo_aio,
        ):
            user, posts = seed(board, 200)
            for operation, (payload, make_call) in board_calls(user, posts).items():
                if operation not in operations:
                    continue
                contenders = [Contender("floor", echo, echo_call(payload))]
                if operation == "GetPost":
                    contenders.append(Contender("floor-aio", echo_aio, echo_call(payload)))
                contenders.append(Contender("board", board, make_call))
                for concurrency in CONCURRENCY:
                    cells.extend(measure(contenders, operation, concurrency, seconds))
                    logger.info("%s c%d done", operation, concurrency)
    floors = {(c.operation, c.concurrency): c.rps for c in cells if c.server == "floor"}
    rows = []
    for cell in cells:
        row = asdict(cell)
        row["ratio_to_floor"] = cell.rps / floors[(cell.operation, cell.concurrency)]
        rows.append(row)
    return {
        "benchmark": "board",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpc": grpc.__version__},
        "database": "sqlite" if url_is_sqlite(database_url) else "postgresql",
        "server_workers": workers,
        "seconds_per_cell": seconds,
        "targets": TARGETS,
        "cells": rows,
    }


def url_is_sqlite(database_url: str | None) -> bool:
    return database_url is None or database_url.startswith("sqlite")


def print_table(figures: dict[str, Any]) -> None:
    header = (
        f"{'operation':<11} {'c':>3} {'server':<10} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'× floor':>8} "
        f"{'err':>4}"
    )
    print(header)
    print("-" * len(header))
    for row in figures["cells"]:
        print(
            f"{row['operation']:<11} {row['concurrency']:>3} {row['server']:<10} {row['rps']:>9.0f} "
            f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['ratio_to_floor']:>8.2f} {row['errors']:>4}"
        )
    for operation, target in figures["targets"].items():
        for row in figures["cells"]:
            if row["server"] == "board" and row["operation"] == operation and row["concurrency"] == 16:
                verdict = "meets" if row["ratio_to_floor"] >= target else "BELOW"
                print(f"{operation} c16: {row['ratio_to_floor']:.2f}× floor ({verdict} target {target}×)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per cell (default 3)")
    parser.add_argument("--workers", type=int, default=8, help="server worker threads (default 8)")
    parser.add_argument("--database-url", help="board database (default: a fresh SQLite file)")
    parser.add_argument(
        "--operations", nargs="+", choices=OPERATIONS, default=list(OPERATIONS), help="default: all three"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--aio", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.serve_echo:
        serve_echo(args.workers, args.aio)
        return 0
    figures = run(args.seconds, args.workers, args.database_url, args.operations)
    print_table(figures)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
