"""Watch latency across replicas on PostgreSQL: a tagging outcome committed by replica B → the update on a
watcher of replica A (LISTEN/NOTIFY, board_server/storage/notifications.py).

Two `board-server` replicas on one throw-away PostgreSQL cluster (fsync on): A has no segmentation target and
polls for watched changes only every 30 s, so an update that reaches its watcher sooner came by notification;
B tags through a model server in this process that refuses every image (the outcome, FAILED, commits at
once; its path to the watcher is the same as TAGGED's). Each sample uploads a photo through A, watches it
there, and waits for the update: latency = when the watcher received it − the outcome's update_time, stamped
inside B's transaction just before its COMMIT (so the COMMIT's fsync is counted too). Target: p50 < 50 ms.

    python -m bench.watch [--runs 3] [--samples 30] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
from PIL import Image

from bench.postgres import benchmark_database
from bench.records import ROOT, load_average, summarize, write_results
from bench.servers import Server, board_executable, clean_env, running
from clients.board import BoardClient
from clients.gen.board.v1 import board_pb2
from clients.gen.torchserve import inference_pb2

logger = logging.getLogger("bench.watch")

TARGET_P50_MS = 50.0
A_WATCH_POLL_S = 30.0
_SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
_MODEL = {
    "arch": "bench_arch",
    "weights": "random",
    "sha256": None,
    "untrained": True,
    "archive_sha256": "b" * 64,
    "class_names": ["background", "dog"],
}


@contextmanager
def refusing_model_server() -> Iterator[str]:
    """TorchServe's gRPC Predictions as far as the board uses it: describe answers a fixed model, every
    image is refused as corrupt (400). Yields HOST:PORT."""

    def predictions(request: Any, context: grpc.ServicerContext) -> Any:
        if "describe" in request.input:
            return inference_pb2.PredictionResponse(prediction=json.dumps({"model": _MODEL}).encode())
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "corrupt: the bench's model server refuses images")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(
        predictions,
        request_deserializer=inference_pb2.PredictionsRequest.FromString,
        response_serializer=inference_pb2.PredictionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE, {"Predictions": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def _photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (30, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _replica(name: str, url: str, work: Path, extra: Sequence[str]) -> Any:
    """A one-process replica on ``url`` (a context manager yielding its Server)."""
    cmd = [
        str(board_executable()), "--address", "127.0.0.1:0", "--database-url", url, "--processes", "1",
        "--metrics-address", "none", "--audit-log", str(work / f"{name}-audit.log"), *extra,
    ]  # fmt: skip
    return running(name, cmd, work, clean_env())


def sample(client: BoardClient, photo: bytes) -> float:
    """One upload through A (to a post of its own: a post holds at most 20), watched on A: milliseconds from
    B's outcome (its update_time) to the watcher."""
    post = client.create_post(0, "watched", "uploaded on A, tagged by B")
    attachment = client.add_attachment(post.id, "p.png", photo)
    for item in client.watch_attachment(attachment.id, timeout=60):
        received = time.time()
        if item.status != board_pb2.ATTACHMENT_STATUS_PENDING:
            return (received - item.update_time.ToNanoseconds() / 1e9) * 1000
    raise RuntimeError(f"the watch of attachment {attachment.id} ended while PENDING")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(url: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    photo = _photo()
    with ExitStack() as stack:
        model = stack.enter_context(refusing_model_server())
        stack.enter_context(  # B: the replica that tags
            _replica("b", url, work, ["--segmentation-target", model, "--tagging-poll", "0.1"])
        )
        a: Server = stack.enter_context(_replica("a", url, work, ["--watch-poll", str(A_WATCH_POLL_S)]))
        client = stack.enter_context(BoardClient(a.target, timeout=30))
        client.create_user("Watcher", "watcher@example.org", "correct horse battery staple")
        client.sign_in("watcher@example.org", "correct horse battery staple")
        for _ in range(3):  # warm-up: connections, prepared statements
            sample(client, photo)
        runs = []
        for run in range(args.runs):
            latencies = [sample(client, photo) for _ in range(args.samples)]
            figures = {
                "p50_ms": round(statistics.median(latencies), 2),
                "p90_ms": round(percentile(latencies, 0.9), 2),
                "p99_ms": round(percentile(latencies, 0.99), 2),
                "max_ms": round(max(latencies), 2),
            }
            logger.info("run %d: %s", run + 1, figures)
            runs.append(figures)
    p50 = summarize([r["p50_ms"] for r in runs])
    return {
        "setup": {
            "database": "PostgreSQL throw-away cluster, fsync and synchronous_commit on (defaults)",
            "replicas": "A: no segmentation target, --watch-poll 30 s; B: tags through a refusing model "
            "server, --tagging-poll 0.1 s; one process each",
            "latency": "the watcher on A receiving the update − the outcome's update_time (stamped in B's "
            "transaction before COMMIT)",
            "samples_per_run": args.samples,
            "runs": args.runs,
        },
        "cells": {
            "p50_ms": p50,
            "p90_ms": summarize([r["p90_ms"] for r in runs]),
            "p99_ms": summarize([r["p99_ms"] for r in runs]),
        },
        "runs": runs,
        "targets": {
            f"commit on B → watcher on A p50 ms (< {TARGET_P50_MS:g})": {
                "value": p50["median"],
                "max": TARGET_P50_MS,
                "met": p50["median"] < TARGET_P50_MS,
            }
        },
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--samples", type=int, default=30, help="watched uploads per run (default 30)")
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database instead of a throw-away cluster")
    parser.add_argument("--results-dir", type=Path, help="write the JSON here (default bench/results/)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    load_before = load_average()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="watch-bench-") as tmp:
        url = args.postgres_url or stack.enter_context(benchmark_database("board_watch"))
        if url is None:
            print("watch bench not run: no PostgreSQL (install postgresql or pass --postgres-url)")
            return 0
        record = measure(url, args, Path(tmp))
    print(json.dumps({"cells": record["cells"], "targets": record["targets"]}, indent=2))
    out = (args.results_dir or ROOT / "bench" / "results") / "watch.json"
    path = write_results("watch", record, load_before=load_before, out=out)
    print(f"written to {path}; load average before → after: {load_before} → {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
