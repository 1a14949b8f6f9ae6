"""End-to-end benchmark: AddAttachment → TAGGED through the board server, beside TorchServe alone.

One run builds the archive (mobilenet_v3_large, random weights, 520 px, as bench.serving), starts TorchServe
with our config on free ports and a board server wired to it (SQLite, tagging over gRPC with the token), and
for the same 520x520 JPEG measures:

- the floor: one gRPC Predictions call to TorchServe, as the board's worker makes it (clients/segment.py);
- the product: AddAttachment, then GetAttachment polled (``--poll-ms``, growing) until TAGGED; the latency
  runs from the call to the attachment's update_time (the commit of TAGGED), so polling does not inflate it;

at concurrency 1 (the two paths taking turns call by call, so both see the same machine load) and 8:
p50/p99 latency, throughput and the ratios e2e/TorchServe (target <= 1.15). Figures go to stdout and
bench/results/e2e.json.

    python -m bench.e2e [--requests 10] [--poll-ms 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.serving import bench_image, build_archive, percentile, torchserve_on_free_ports
from clients.board import BoardClient
from clients.gen.board.v1 import board_pb2
from clients.segment import SegmentClient, TokenSource
from seg_handler import launch

logger = logging.getLogger("bench.e2e")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "e2e.json"
RATIO_TARGET = 1.15
LISTENING = re.compile(r"listening on \S+:(\d+)")
# A measured call: returns its own latency in ms, or None to be timed from outside.
Call = Callable[[], float | None]


def _stats(latencies: Sequence[float], elapsed: float) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "min_ms": round(min(latencies), 1),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "rps": round(len(latencies) / elapsed, 3),
    }


def run_concurrent(
    calls: dict[str, Call], concurrency: int, total: int, rounds: int
) -> dict[str, dict[str, float]]:
    """``total`` calls per path from ``concurrency`` threads, the paths taking turns in ``rounds`` bursts so
    that background load on the machine weighs on both alike."""
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    elapsed = dict.fromkeys(calls, 0.0)

    def timed(call: Call, into: list[float]) -> None:
        start = time.perf_counter()
        reported = call()
        into.append(reported if reported is not None else (time.perf_counter() - start) * 1000)

    per_round = max(concurrency, total // rounds)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for _ in range(rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                list(pool.map(lambda _i, c=call, n=name: timed(c, latencies[n]), range(per_round)))
                elapsed[name] += time.perf_counter() - start
    return {name: _stats(latencies[name], elapsed[name]) for name in calls}


def run_interleaved(calls: dict[str, Call], rounds: int) -> dict[str, dict[str, float]]:
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            reported = call()
            latencies[name].append(reported if reported is not None else (time.perf_counter() - start) * 1000)
    return {name: _stats(values, sum(values) / 1000) for name, values in latencies.items()}


def measure_paths(torchserve_alone: Call, board_e2e: Call, args: argparse.Namespace) -> dict[str, Any]:
    """c=1 interleaved, then each higher concurrency path by path; ratios of the board to TorchServe."""
    for _ in range(2):  # warm-up: worker, channels, caches
        torchserve_alone()
        board_e2e()
    figures: dict[str, Any] = {"torchserve_grpc": {}, "board_e2e": {}}
    interleaved = run_interleaved(
        {"torchserve_grpc": torchserve_alone, "board_e2e": board_e2e}, args.requests
    )
    for name, entry in interleaved.items():
        figures[name]["1"] = entry
    for concurrency in args.concurrency:
        if concurrency == 1:
            continue
        measured = run_concurrent(
            {"torchserve_grpc": torchserve_alone, "board_e2e": board_e2e},
            concurrency,
            total=args.requests * 4,
            rounds=args.rounds,
        )
        for name, entry in measured.items():
            figures[name][str(concurrency)] = entry
    for key, entry in figures["board_e2e"].items():
        floor = figures["torchserve_grpc"][key]
        entry["ratio_p50_vs_torchserve"] = round(entry["p50_ms"] / floor["p50_ms"], 3)
        entry["ratio_min_vs_torchserve"] = round(entry["min_ms"] / floor["min_ms"], 3)
        entry["ratio_rps_torchserve_vs_board"] = round(floor["rps"] / entry["rps"], 3)
    return figures


def start_board(
    serve: launch.ServeSettings, workdir: Path, tagging_workers: int
) -> tuple[subprocess.Popen[bytes], int]:
    """board-server on a free port, wired to ``serve``; returns the process and its port."""
    log_path = workdir / "board.log"
    command = [
        str(Path(sys.executable).parent / "board-server"),
        "--address", "127.0.0.1:0",
        "--database-url", f"sqlite:///{workdir / 'board.db'}",
        "--audit-log", str(workdir / "audit.log"),
        "--segmentation-target", serve.grpc_inference_target,
        "--segmentation-token-file", str(serve.key_file),
        "--tagging-workers", str(tagging_workers),
    ]  # fmt: skip
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"board-server exited:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.1)
    raise RuntimeError("board-server did not start")


def targets_of(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ratios the issue sets targets for (<= 1.15), with whether each is met.

    Besides p50, the ratio of the minimum latencies at c=1: on a shared 2-core machine other processes'
    load moves the medians by more than the board's own overhead, the minimum much less.
    """
    c1 = figures["board_e2e"]["1"]
    targets: dict[str, dict[str, Any]] = {
        "e2e_vs_torchserve_p50_c1": {"value": c1["ratio_p50_vs_torchserve"], "target": RATIO_TARGET},
        "e2e_vs_torchserve_min_c1": {"value": c1["ratio_min_vs_torchserve"], "target": RATIO_TARGET},
    }
    for key, entry in figures["board_e2e"].items():
        if key != "1":
            targets[f"torchserve_vs_e2e_rps_c{key}"] = {
                "value": entry["ratio_rps_torchserve_vs_board"],
                "target": RATIO_TARGET,
            }
    for target in targets.values():
        target["met"] = target["value"] <= target["target"]
    return targets


def run(args: argparse.Namespace) -> dict[str, Any]:
    image = bench_image()
    loadavg_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        workdir = Path(tmp)
        store = args.model_store or workdir / "model_store"
        if not (store / "deeplabv3.mar").is_file():
            logger.info("building the archive (%s, %s weights)", args.arch, args.weights)
            build_archive(store, args.arch, args.weights)
        with torchserve_on_free_ports(store, workdir / "torchserve") as (serve, endpoints):
            board_proc: subprocess.Popen[bytes] | None = None
            try:
                board_proc, port = start_board(serve, workdir, tagging_workers=max(args.concurrency))
                segment = SegmentClient(endpoints, TokenSource.from_key_file(serve.key_file), timeout_s=120)
                board = BoardClient(f"127.0.0.1:{port}", timeout=120)
                user = board.create_user("Bench", f"bench-{time.time_ns()}@example.org")
                post = board.create_post(user.id, "Bench", "e2e")
                poll_s = args.poll_ms / 1000

                def torchserve_alone() -> None:
                    segment.segment(image, transport="grpc")

                def board_e2e() -> float:
                    started = time.time()
                    added = board.add_attachment(post.id, "bench.jpg", image)
                    delay = poll_s
                    while True:
                        got = board.get_attachment(added.id)
                        if got.status != board_pb2.ATTACHMENT_STATUS_PENDING:
                            break
                        time.sleep(delay)
                        # Growing interval: 8 clients polling every 25 ms would take CPU from the model.
                        delay = min(delay * 1.5, 10 * poll_s)
                    if got.status != board_pb2.ATTACHMENT_STATUS_TAGGED:
                        raise RuntimeError(f"attachment {added.id} FAILED: {got.failure_reason}")
                    # From the call to the commit of TAGGED, by the server's clock (the same machine): the
                    # polling interval adds nothing to the latency, only to the client's cycle.
                    return (got.update_time.ToNanoseconds() / 1e9 - started) * 1000

                figures = measure_paths(torchserve_alone, board_e2e, args)
                segment.close()
                board.close()
            finally:
                if board_proc is not None:
                    launch.stop_process(board_proc.pid)
    figures["targets"] = targets_of(figures)
    figures["setup"] = {
        "arch": args.arch,
        "weights": args.weights,
        "image": "520x520 JPEG",
        "poll_ms": args.poll_ms,
        "requests_c1": args.requests,
        "board": "SQLite (WAL, synchronous=FULL), tagging over TorchServe gRPC with the token",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "loadavg_1m_before_after": [round(loadavg_before, 2), round(os.getloadavg()[0], 2)],
    }
    return figures


def print_table(figures: dict[str, Any]) -> None:
    print(
        f"{'path':<17}{'conc':>5}{'min ms':>9}{'p50 ms':>9}{'p99 ms':>9}{'rps':>8}"
        f"{'p50/ts':>8}{'min/ts':>8}{'ts rps/e2e':>11}"
    )
    for name in ("torchserve_grpc", "board_e2e"):
        for concurrency, entry in sorted(figures[name].items(), key=lambda kv: int(kv[0])):
            print(
                f"{name:<17}{concurrency:>5}{entry['min_ms']:>9.1f}{entry['p50_ms']:>9.1f}{entry['p99_ms']:>9.1f}"
                f"{entry['rps']:>8.2f}{entry.get('ratio_p50_vs_torchserve', 1.0):>8.3f}"
                f"{entry.get('ratio_min_vs_torchserve', 1.0):>8.3f}"
                f"{entry.get('ratio_rps_torchserve_vs_board', 1.0):>11.3f}"
            )
    print("targets:", json.dumps(figures["targets"]))
    print("load average (1 min) before/after:", figures["setup"]["loadavg_1m_before_after"])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="deeplabv3_mobilenet_v3_large")
    parser.add_argument("--weights", default="random", help="training.export --weights (random: no download)")
    parser.add_argument("--requests", type=int, default=10, help="timed requests at c=1 (4x that at c>1)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5, help="turns the paths take at c>1 (default 5)")
    parser.add_argument(
        "--poll-ms",
        type=float,
        default=25.0,
        help="first GetAttachment polling interval, growing 1.5x to 10x (not in the latency)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--model-store", type=Path, help="reuse (or build once into) this folder's deeplabv3.mar across runs"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    figures = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print_table(figures)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
