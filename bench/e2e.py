"""End-to-end benchmark: AddAttachment → committed TAGGED through the board server, beside TorchServe alone.

One invocation builds the archive (deeplabv3_mobilenet_v3_large, random weights, 520 px, as bench.serving),
starts TorchServe with our config on free ports and a board server wired to it exactly as `make run` wires it
(its defaults: SQLite, its processes, the default number of tagging workers, tagging over gRPC with the
inference key file), signs a user in, and for the same 520x520 JPEG measures in ``--runs`` runs (default 3):

- the floor: one gRPC Predictions call to TorchServe, as the board's tagging worker makes it
  (clients/segment.py);
- the product: AddAttachment, then WatchAttachment until TAGGED; the latency runs from the call to the
  attachment's update_time, stamped in the transaction that commits TAGGED (just before its fsync), so the
  watch's own delay is not in it;

at concurrency 1 (the two paths taking turns call by call, so both see the same machine load) and 8: p50
latency and throughput, and the ratios board/TorchServe (reference bound 1.15). Every cell is the median and
min–max of the runs (bench/records.py → bench/results/e2e.json).

Why the default number of tagging workers (2) is the right one to measure: TorchServe runs one worker (see
seg_handler/model-config.yaml), so one call in flight plus one waiting keeps it busy; more tagging calls only
queue inside TorchServe instead of in the database.

    python -m bench.e2e [--runs 3] [--requests 8]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.records import measure_and_record, summarize
from bench.servers import limit_flags, limits_record
from bench.serving import bench_image, build_archive, torchserve_on_free_ports
from clients.board import BoardClient
from clients.gen.board.v1 import board_pb2
from clients.segment import SegmentClient, TokenSource
from seg_handler import launcher as launch
from seg_handler.launcher import processes

logger = logging.getLogger("bench.e2e")

RATIO_MAX = 1.15
CONCURRENCY = 8
PASSWORD = "bench password, long enough"  # noqa: S105 - a throw-away user of a throw-away database
# A measured call: when it started and when its result was there (epoch seconds, this machine's clock).
Call = Callable[[], tuple[float, float]]


def start_board(serve: launch.ServeSettings, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """board-server on a free port with its defaults, wired to ``serve`` as `make run` does."""
    log_path = workdir / "board.log"
    command = [
        str(Path(sys.executable).parent / "board-server"),
        "--address", "127.0.0.1:0",
        "--http-address", "none",
        "--database-url", f"sqlite:///{workdir / 'board.db'}",
        "--audit-log", str(workdir / "audit.log"),
        "--segmentation-target", serve.grpc_inference_target,
        "--segmentation-token-file", str(serve.inference_key_file),
        *limit_flags(),
    ]  # fmt: skip
    proc = processes.start(command, log_path, cwd=workdir)
    try:
        return proc, processes.wait_listening(proc, log_path, timeout=60).port
    except BaseException:
        processes.stop(proc)
        raise


class PostSupply:
    """Post ids for the uploads, a new post every ``per_post`` uploads (a post holds a limited number of
    attachments, --max-attachments-per-post)."""

    def __init__(self, create: Callable[[], int], per_post: int = 10) -> None:
        self._create = create
        self._per_post = per_post
        self._lock = threading.Lock()
        self._used = per_post
        self._post = 0

    def next(self) -> int:
        with self._lock:
            if self._used >= self._per_post:
                self._post, self._used = self._create(), 0
            self._used += 1
            return self._post


def _ms(span: tuple[float, float]) -> float:
    return (span[1] - span[0]) * 1000


def c1_p50(calls: dict[str, Call], requests: int) -> dict[str, float]:
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(requests):
        for name, call in calls.items():
            latencies[name].append(_ms(call()))
    return {name: statistics.median(values) for name, values in latencies.items()}


def concurrent(call: Call, concurrency: int, total: int) -> tuple[float, float]:
    """(p50 latency ms, requests per second) of ``total`` calls from ``concurrency`` threads; the rate runs
    from the first call to the last result (for the board: the last commit of TAGGED, not the client seeing
    it, so the watch's delay is in neither figure)."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        spans = list(pool.map(lambda _i: call(), range(total)))
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    return statistics.median(_ms(span) for span in spans), total / elapsed


def measure_run(torchserve_alone: Call, board_e2e: Call, requests: int) -> dict[str, float]:
    """One run: c1 p50 of both paths (interleaved), then both at concurrency 8."""
    p50 = c1_p50({"torchserve": torchserve_alone, "board": board_e2e}, requests)
    run = {
        "torchserve_c1_p50_ms": p50["torchserve"],
        "board_c1_p50_ms": p50["board"],
        "board_vs_torchserve_c1_p50": p50["board"] / p50["torchserve"],
    }
    for name, call in (("torchserve", torchserve_alone), ("board", board_e2e)):
        latency, rps = concurrent(call, CONCURRENCY, 2 * requests)
        run[f"{name}_c8_p50_ms"] = latency
        run[f"{name}_c8_rps"] = rps
    run["torchserve_vs_board_c8_rps"] = run["torchserve_c8_rps"] / run["board_c8_rps"]
    return run


def run(args: argparse.Namespace) -> dict[str, Any]:
    image = bench_image()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        workdir = Path(tmp)
        logger.info("building the archive (%s, %s weights)", args.arch, args.weights)
        build_archive(workdir / "store", args.arch, args.weights)
        with torchserve_on_free_ports(workdir / "store", workdir / "torchserve") as (serve, endpoints):
            board_proc, port = start_board(serve, workdir)
            tokens = TokenSource.from_key_file(serve.inference_key_file)
            try:
                with (
                    SegmentClient(endpoints, tokens, timeout_s=300) as segment,
                    BoardClient(f"127.0.0.1:{port}", timeout=300) as board,
                ):
                    user = board.create_user("Bench", f"bench-{time.time_ns()}@example.org", PASSWORD)
                    board.sign_in(user.email, PASSWORD)
                    posts = PostSupply(lambda: board.create_post(user.id, "Bench", "e2e").id)

                    def torchserve_alone() -> tuple[float, float]:
                        started = time.time()
                        segment.segment(image, transport="grpc")
                        return started, time.time()

                    def board_e2e() -> tuple[float, float]:
                        post_id = posts.next()  # before the clock starts
                        started = time.time()
                        added = board.add_attachment(post_id, "bench.jpg", image)
                        done = board.wait_for_tagging(added.id, timeout=300)
                        if done.status != board_pb2.ATTACHMENT_STATUS_TAGGED:
                            raise RuntimeError(f"attachment {added.id} FAILED: {done.failure_reason}")
                        # To the commit of TAGGED by the server's clock (the same machine).
                        return started, done.update_time.ToNanoseconds() / 1e9

                    for _ in range(2):  # warm-up: worker, channels, caches
                        torchserve_alone()
                        board_e2e()
                    runs = []
                    for index in range(args.runs):
                        measured = measure_run(torchserve_alone, board_e2e, args.requests)
                        logger.info("run %d: %s", index + 1, {k: round(v, 3) for k, v in measured.items()})
                        runs.append(measured)
            finally:
                processes.stop(board_proc)
    cells = {key: summarize([round(r[key], 4) for r in runs]) for key in runs[0]}
    targets = {
        name: {"value": cells[name]["median"], "max": RATIO_MAX, "met": cells[name]["median"] <= RATIO_MAX}
        for name in ("board_vs_torchserve_c1_p50", "torchserve_vs_board_c8_rps")
    }
    return {
        "cells": cells,
        "runs": runs,
        "targets": targets,
        "setup": {
            "arch": args.arch,
            "weights": args.weights,
            "image": "520x520 JPEG",
            "requests_per_run": {"c1": args.requests, "c8": 2 * args.requests},
            "board": "board-server defaults (SQLite WAL synchronous=FULL, default processes and tagging "
            "workers), tagging over TorchServe gRPC with the inference key file",
            "latency": "AddAttachment call to the update_time of the committed TAGGED",
            "limits": limits_record(),
        },
    }


def print_table(figures: Mapping[str, Any]) -> None:
    for key, cell in figures["cells"].items():
        print(f"{key:<30} {cell['median']:>10.3f}  ({cell['min']:.3f}–{cell['max']:.3f})")
    for name, target in figures["targets"].items():
        verdict = "met" if target["met"] else "NOT met"
        print(f"target {name}: {target['value']:.3f} <= {target['max']}: {verdict}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="deeplabv3_mobilenet_v3_large")
    parser.add_argument("--weights", default="random", help="training.export --weights (random: no download)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8, help="calls per path per run at c1 (2x at c8)")
    parser.add_argument("--name", default="e2e", help="results file bench/results/<name>.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    if args.runs < 1 or args.requests < 2:
        raise SystemExit("--runs must be >= 1 and --requests >= 2")
    measure_and_record(args.name, lambda: run(args), print_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
