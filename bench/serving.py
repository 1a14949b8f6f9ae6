"""Serving benchmark: the handler's whole pipeline in one process (the floor) vs the model through TorchServe
and through the Open Inference Protocol server (KServe over the export's ``.pt2``).

One invocation builds the archive with `python -m training.export` (deeplabv3_mobilenet_v3_large, 520 px,
random weights unless --weights), starts TorchServe with our config and the OIP server (.venv-oip) on free
ports, and for a 520x520 JPEG measures, in ``--runs`` runs (default 3) that each take the floor and the served
paths in turn:

- the floor: our SegmentationHandler's ``handle`` with TorchServe's own Context, in this process, with the
  worker's torch threads and OpenMP settings (launch.WORKER_ENV): decode → to_tensor → TorchScript forward →
  logits_to_mask → PNG + JSON, i.e. all the worker does for a request except receiving it and answering;
- REST and gRPC through TorchServe, and OIP gRPC (ModelInfer) through the OIP server, at concurrency 1 (the
  four paths taking turns call by call, so that they see the same machine load): p50 latency and its ratio to
  the floor (target <= 1.10);
- the same paths at concurrency 8 against the floor's rate (one request after the other in this process):
  throughput ratio (target >= 0.90), and the CPU time per request of the server's processes (TorchServe: its
  worker and its Java frontend; the OIP server: its one process, as "frontend") and this client beside the
  pipeline's own: where a served request's time goes (CPU time hardly moves with other load on the machine;
  wall time does).

Each cell is the median and min–max of the runs (bench/records.py); bench/results/serving.json keeps every run
with the machine facts and load. ``--sweep`` adds gRPC c1/c8 for workers x torch threads per worker, each
against the floor with the same threads and against the best floor of the sweep.

    python -m bench.serving [--runs 3] [--requests 12] [--sweep]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from bench.procfs import cpu_seconds, descendants
from bench.records import measure_and_record, summarize
from clients.oip import OipClient
from clients.segment import SegmentClient, ServingEndpoints, TokenSource, Transport
from seg_handler import handler
from seg_handler import launcher as launch
from seg_handler.image_policy import VOC_CLASSES

logger = logging.getLogger("bench.serving")

ROOT = Path(__file__).resolve().parent.parent
SIZE = 520
RATIO_C1_MAX = 1.10
RATIO_C8_MIN = 0.90
BYTES_TARGET = 0.01
TRANSPORTS: tuple[Transport, ...] = ("rest", "grpc")
OIP = "oip"
PATHS = (*TRANSPORTS, OIP)
_TORCH_THREADS = re.compile(r"torch threads (\d+)")


def bench_image() -> bytes:
    """A 520x520 JPEG with some structure (shapes over a gradient), the same for every run."""
    ramp = np.linspace(0, 255, SIZE, dtype=np.float32)
    arr = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (SIZE, 1)), np.tile(ramp[:, None], (1, SIZE))], -1
    )
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse((60, 80, 300, 400), fill=(200, 40, 40))
    draw.rectangle((320, 200, 480, 470), fill=(30, 160, 60))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def build_archive(store: Path, arch: str, weights: str, config_file: Path | None = None) -> None:
    """deeplabv3.mar in ``store`` from `python -m training.export` at the default input size."""
    command = [
        sys.executable,
        "-m",
        "training.export",
        "--arch",
        arch,
        "--weights",
        weights,
        "--out",
        str(store),
    ]
    if config_file is not None:
        command += ["--config-file", str(config_file)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)


@contextlib.contextmanager
def torchserve_on_free_ports(
    store: Path, runtime_dir: Path
) -> Iterator[tuple[launch.ServeSettings, ServingEndpoints]]:
    """TorchServe serving ``store`` on free loopback ports while the block runs; stopped by process group.

    Raises launch.LaunchError when it does not get ready.
    """
    settings = launch.isolated_settings(store, runtime_dir, ready_timeout_s=300)
    proc = launch.start(settings)
    try:
        yield (
            settings,
            ServingEndpoints.local(
                settings.host, settings.inference_port, settings.management_port, settings.grpc_inference_port
            ),
        )
    finally:
        launch.stop_process(proc.pid)


@contextlib.contextmanager
def oip_server_on_a_free_port(store: Path, runtime_dir: Path) -> Iterator[launch.ServeSettings]:
    """The OIP server over ``store``'s .pt2 on a free loopback port while the block runs; stopped by its
    process group. Raises launch.LaunchError when it does not get ready."""
    from seg_handler.launcher import oip

    settings = launch.isolated_settings(store, runtime_dir, ready_timeout_s=300, serving="oip")
    proc = oip.start(settings)
    try:
        yield settings
    finally:
        launch.stop_process(proc.pid)


class InProcessPipeline:
    """The floor: the archive's handler run in this process exactly as a worker runs it for one request
    (TorchServe's own Context and RequestProcessor, our SegmentationHandler.handle), without the IPC."""

    def __init__(self, mar: Path, workdir: Path, torch_threads: int) -> None:
        from ts.context import Context

        model_dir = workdir / "model"
        with zipfile.ZipFile(mar) as archive:
            archive.extractall(model_dir)
        manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        config = yaml.safe_load((model_dir / "model-config.yaml").read_text()) or {}
        # The worker's threads first; initialize applies model-config's handler.torch_threads, if any, on top.
        torch.set_num_threads(torch_threads)
        self.context = Context(manifest["model"]["modelName"], str(model_dir), manifest, 1, None, "bench")
        self.context.model_yaml_config = config
        self.handler = handler.SegmentationHandler()
        self.handler.initialize(self.context)
        self.torch_threads = torch.get_num_threads()

    def __call__(self, image: bytes) -> bytes | str:
        from ts.context import RequestProcessor

        # What a gRPC request looks like to the handler: per-input content types, no request headers.
        self.context.request_processor = [RequestProcessor({"data": {"content-type": None}})]
        answers = self.handler.handle(
            [{"data": bytearray(image), "format": bytearray(b"json")}], self.context
        )
        return answers[0]


def worker_torch_threads(settings: launch.ServeSettings) -> int:
    """The torch threads the worker reported when it loaded the model (its log line)."""
    log = settings.runtime_dir / "logs" / "model_log.log"
    found = _TORCH_THREADS.findall(log.read_text(errors="replace")) if log.is_file() else []
    if not found:
        raise RuntimeError(f"the worker did not report its torch threads in {log}")
    return int(found[-1])


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds per request spent by TorchServe's workers, its Java frontend and this client (the bench
    process, while only the client runs in it): where a served request's time goes besides the pipeline.
    CPU time, unlike wall time, hardly moves with other load on a shared machine."""

    def __init__(self, frontend_pid: int) -> None:
        self.frontend = frontend_pid

    def measure(self, work: Callable[[], int]) -> dict[str, float]:
        workers = descendants(self.frontend)
        before = {pid: cpu_seconds([pid]) for pid in (self.frontend, *workers)}
        client = own_cpu_s()
        requests = work()
        after = {pid: cpu_seconds([pid]) for pid in before}
        return {
            "worker": 1000 * sum(after[p] - before[p] for p in workers) / requests,
            "frontend": 1000 * (after[self.frontend] - before[self.frontend]) / requests,
            "client": 1000 * (own_cpu_s() - client) / requests,
        }


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def interleaved_c1(calls: dict[str, Callable[[], object]], requests: int) -> dict[str, float]:
    """p50 latency (ms) of each path at concurrency 1, the paths taking turns call by call."""
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(requests):
        for name, call in calls.items():
            latencies[name].append(timed(call))
    return {name: statistics.median(values) for name, values in latencies.items()}


def rate(call: Callable[[], object], concurrency: int, total: int) -> float:
    """Requests per second for ``total`` calls from ``concurrency`` threads."""
    start = time.perf_counter()
    if concurrency == 1:
        for _ in range(total):
            call()
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(lambda _i: call(), range(total)))
    return total / (time.perf_counter() - start)


def measure_run(
    pipeline: Callable[[], object],
    served: dict[str, Callable[[], object]],
    requests: int,
    meters: dict[str, CpuMeter],
) -> dict[str, float]:
    """One run: c1 p50 of the floor and each served path (interleaved), then the floor's rate and c8 rates,
    with the CPU each process spent per request."""
    p50 = interleaved_c1({"pipeline": pipeline, **served}, requests)
    floor_cpu = own_cpu_s()
    floor_rps = rate(pipeline, 1, requests)
    figures = {
        "pipeline_p50_ms": p50["pipeline"],
        "pipeline_rps": floor_rps,
        "pipeline_cpu_ms": 1000 * (own_cpu_s() - floor_cpu) / requests,
    }
    for name, call in served.items():
        figures[f"{name}_c1_p50_ms"] = p50[name]
        figures[f"{name}_c1_ratio"] = p50[name] / p50["pipeline"]
        rates: list[float] = []

        def c8(call: Callable[[], object] = call, rates: list[float] = rates) -> int:
            rates.append(rate(call, 8, 2 * requests))
            return 2 * requests

        spent = meters[name].measure(c8)
        figures[f"{name}_c8_rps"] = rates[0]
        figures[f"{name}_c8_ratio"] = rates[0] / floor_rps
        for process, ms in spent.items():
            figures[f"{name}_c8_cpu_ms_{process}"] = ms
    return figures


def stock_response_bytes(model: torch.jit.ScriptModule, image: bytes) -> int:
    """Bytes TorchServe's stock ``image_segmenter`` answers for ``image`` with this model.

    The stock handler cannot be served here (its base class imports captum, which is not installed), so this
    runs its own steps: the same preprocessing (Resize 256, CenterCrop 224, ImageNet normalisation), the
    same postprocess (softmax, max, stack [class, score] -> [224][224][2] lists) and the worker's encoding
    of a list answer, ``json.dumps(value, indent=2)``.
    """
    from torchvision import transforms

    preprocess = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=list(handler.IMAGENET_MEAN), std=list(handler.IMAGENET_STD)),
        ]
    )
    with Image.open(io.BytesIO(image)) as raw:
        batch = preprocess(raw.convert("RGB"))[None]
    with torch.inference_mode():
        out = torch.nn.functional.softmax(model(batch), dim=1)
    top = torch.max(out, dim=1)
    answer = torch.stack([top.indices.type(top.values.dtype), top.values], dim=3).tolist()
    return len(json.dumps(answer[0], indent=2).encode("utf-8"))


def structured_mask_bytes() -> int:
    """Response bytes of our JSON answer for a realistic 520x520 mask (a few blobs of 3 classes): a randomly
    initialised model answers an almost uniform mask, whose PNG is unrealistically small."""
    img = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(img)
    draw.ellipse((60, 80, 300, 400), fill=15)
    draw.polygon([(320, 470), (400, 180), (480, 470)], fill=12)
    draw.rectangle((10, 430, 200, 515), fill=18)
    mask = np.asarray(img, dtype=np.uint8)
    info = handler.ModelInfo(
        arch="deeplabv3_mobilenet_v3_large", weights="x" * 40, sha256="0" * 64, untrained=False,
        class_names=VOC_CLASSES, archive_sha256="0" * 64,
    )  # fmt: skip
    return len(json.dumps(handler.mask_response(mask, info), separators=(",", ":")).encode())


def response_bytes(client: SegmentClient, pipeline: InProcessPipeline, image: bytes) -> dict[str, Any]:
    stock = stock_response_bytes(pipeline.handler.model, image)
    ours = len(client.predict_raw(image, transport="rest"))
    structured = structured_mask_bytes()
    return {
        "ours_json": ours,
        "ours_json_structured_mask": structured,
        "stock_image_segmenter": stock,
        "stock_how": "stock image_segmenter steps run in-process (captum missing, so not served)",
        "ratio_structured_vs_stock": round(structured / stock, 5),
        "met": structured / stock <= BYTES_TARGET,
    }


def summarize_runs(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {key: summarize([round(run[key], 4) for run in runs]) for key in runs[0]}


def targets_of(cells: dict[str, Any]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    for transport in (path for path in PATHS if f"{path}_c1_ratio" in cells):
        c1 = cells[f"{transport}_c1_ratio"]["median"]
        c8 = cells[f"{transport}_c8_ratio"]["median"]
        targets[f"{transport}_c1_p50_vs_pipeline"] = {
            "value": c1,
            "max": RATIO_C1_MAX,
            "met": c1 <= RATIO_C1_MAX,
        }
        targets[f"{transport}_c8_rps_vs_pipeline"] = {
            "value": c8,
            "min": RATIO_C8_MIN,
            "met": c8 >= RATIO_C8_MIN,
        }
    return targets


def _caller(client: SegmentClient, image: bytes, transport: Transport) -> Callable[[], object]:
    def call() -> bytes:
        return client.predict_raw(image, transport=transport)

    return call


def serve_and_measure(
    store: Path,
    workdir: Path,
    image: bytes,
    args: argparse.Namespace,
    *,
    transports: Sequence[Transport],
    with_oip: bool = False,
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Start TorchServe (and with ``with_oip`` the OIP server) on ``store``, build the matching floor, run
    ``args.runs`` runs; (runs, facts)."""
    with contextlib.ExitStack() as stack:
        settings, endpoints = stack.enter_context(torchserve_on_free_ports(store, workdir / "torchserve"))
        threads = worker_torch_threads(settings)
        frontend = CpuMeter(int(settings.pid_file.read_text()))
        meters: dict[str, CpuMeter] = dict.fromkeys(transports, frontend)
        pipeline = InProcessPipeline(store / "deeplabv3.mar", workdir, threads)
        tokens = TokenSource.from_key_file(settings.inference_key_file)
        client = stack.enter_context(SegmentClient(endpoints, tokens, timeout_s=300))
        served: dict[str, Callable[[], object]] = {t: _caller(client, image, t) for t in transports}
        if with_oip:
            oip_settings = stack.enter_context(oip_server_on_a_free_port(store, workdir / "oip"))
            meters[OIP] = CpuMeter(int(oip_settings.oip_pid_file.read_text()))
            oip_client = stack.enter_context(OipClient(oip_settings.grpc_inference_target, timeout_s=300))
            served[OIP] = partial(oip_client.predict_raw, image)
        for _ in range(2):  # warm-up: worker, channels, caches
            pipeline(image)
            for call in served.values():
                call()
        runs = []
        for index in range(args.runs):
            run = measure_run(lambda: pipeline(image), served, args.requests, meters)
            logger.info("run %d: %s", index + 1, {k: round(v, 3) for k, v in run.items()})
            runs.append(run)
        facts = {
            "worker_torch_threads": threads,
            "floor_torch_threads": pipeline.torch_threads,
            "response_bytes": response_bytes(client, pipeline, image) if "rest" in transports else None,
        }
    return runs, facts


def run(args: argparse.Namespace) -> dict[str, Any]:
    image = bench_image()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        store = work / "store"
        logger.info("exporting %s (%s) at %d px", args.arch, args.weights, SIZE)
        build_archive(store, args.arch, args.weights)
        runs, facts = serve_and_measure(store, work, image, args, transports=TRANSPORTS, with_oip=True)
    cells = summarize_runs(runs)
    return {
        "cells": cells,
        "runs": runs,
        "targets": targets_of(cells),
        **facts,
        "setup": {
            "arch": args.arch,
            "weights": args.weights,
            "image": f"{SIZE}x{SIZE} JPEG, {len(image)} bytes",
            "requests_per_run": {"c1": args.requests, "c8": 2 * args.requests, "floor_rate": args.requests},
            "model_config": yaml.safe_load((ROOT / "seg_handler" / "model-config.yaml").read_text()),
            "device": "cpu",
        },
    }


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """gRPC c1 p50 and c8 rate for workers x torch threads per worker, each against its own floor."""
    image = bench_image()
    template = yaml.safe_load((ROOT / "seg_handler" / "model-config.yaml").read_text())
    rows: list[dict[str, Any]] = []
    for threads in args.sweep_threads:
        for workers in args.sweep_workers:
            with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
                work = Path(tmp)
                config = dict(template, minWorkers=workers, maxWorkers=workers)
                config["handler"] = dict(template.get("handler") or {}, torch_threads=threads)
                (work / "model-config.yaml").write_text(yaml.safe_dump(config))
                build_archive(work / "store", args.arch, args.weights, config_file=work / "model-config.yaml")
                runs, facts = serve_and_measure(work / "store", work, image, args, transports=("grpc",))
            cells = summarize_runs(runs)
            row = {"workers": workers, "torch_threads": facts["worker_torch_threads"], "cells": cells}
            logger.info("sweep workers=%d threads=%d: %s", workers, threads, cells["grpc_c8_ratio"])
            rows.append(row)
    best_floor = max(row["cells"]["pipeline_rps"]["median"] for row in rows)
    for row in rows:
        row["grpc_c8_rps_vs_best_floor"] = round(row["cells"]["grpc_c8_rps"]["median"] / best_floor, 3)
    return rows


def print_table(figures: Mapping[str, Any]) -> None:
    cells = figures["cells"]

    def cell(key: str, fmt: str = ".3f") -> str:
        c = cells[key]
        return f"{c['median']:{fmt}} ({c['min']:{fmt}}–{c['max']:{fmt}})"

    print(f"floor: handler pipeline in-process, {figures['floor_torch_threads']} torch threads "
          f"(worker: {figures['worker_torch_threads']})")  # fmt: skip
    print(f"  p50 {cell('pipeline_p50_ms', '.1f')} ms, rate {cell('pipeline_rps')} rps")
    for transport in (path for path in PATHS if f"{path}_c1_ratio" in cells):
        latency, ratio = cell(f"{transport}_c1_p50_ms", ".1f"), cell(f"{transport}_c1_ratio")
        print(f"{transport:>5} c1 p50 {latency} ms  ratio {ratio}")
        throughput, ratio = cell(f"{transport}_c8_rps"), cell(f"{transport}_c8_ratio")
        print(f"{transport:>5} c8 rate {throughput} rps  ratio {ratio}")
        spent = ", ".join(
            f"{process} {cells[f'{transport}_c8_cpu_ms_{process}']['median']:.0f}"
            for process in ("worker", "frontend", "client")
        )
        pipeline_cpu = cells["pipeline_cpu_ms"]["median"]
        print(f"{'':>5} c8 CPU ms per request: {spent} (the pipeline in-process: {pipeline_cpu:.0f})")
    for name, target in figures["targets"].items():
        bound = f"<= {target['max']}" if "max" in target else f">= {target['min']}"
        print(f"target {name}: {target['value']:.3f} {bound}: {'met' if target['met'] else 'NOT met'}")
    if figures.get("response_bytes"):
        print("response bytes:", json.dumps(figures["response_bytes"]))
    for row in figures.get("sweep_grpc", []):
        c = {key: value["median"] for key, value in row["cells"].items()}
        print(
            f"sweep workers={row['workers']} threads={row['torch_threads']}: "
            f"c1 {c['grpc_c1_p50_ms']:.0f} ms (x{c['grpc_c1_ratio']:.3f}), c8 {c['grpc_c8_rps']:.2f} rps "
            f"(x{c['grpc_c8_ratio']:.3f} own floor, x{row['grpc_c8_rps_vs_best_floor']:.3f} best floor)"
        )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="deeplabv3_mobilenet_v3_large")
    parser.add_argument("--weights", default="random", help="training.export --weights (random: no download)")
    parser.add_argument("--runs", type=int, default=3, help="runs, each measuring the floor and the paths")
    parser.add_argument("--requests", type=int, default=12, help="calls per path per run at c1 (2x at c8)")
    parser.add_argument("--sweep", action="store_true", help="also gRPC for workers x torch threads")
    parser.add_argument("--sweep-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sweep-threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--name", default="serving", help="results file bench/results/<name>.json")
    return parser


def run_with_the_workers_environment(argv: Sequence[str]) -> None:
    """Run this benchmark again with the OpenMP settings TorchServe's workers get (launch.WORKER_ENV) when
    this process lacks them: the floor must run the pipeline as a worker does, and libgomp reads them once,
    when torch loads. Returns only when they are already set."""
    missing = {key: value for key, value in launch.WORKER_ENV.items() if key not in os.environ}
    if missing:
        logger.info("running again with the workers' environment %s", missing)
        command = [sys.executable, "-m", "bench.serving", *argv]
        os.execve(sys.executable, command, {**os.environ, **missing})  # noqa: S606 - this same benchmark


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run_with_the_workers_environment(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    if args.runs < 1 or args.requests < 2:
        raise SystemExit("--runs must be >= 1 and --requests >= 2")

    def measure() -> dict[str, Any]:
        figures = run(args)
        if args.sweep:
            figures["sweep_grpc"] = sweep(args)
        return figures

    measure_and_record(args.name, measure, print_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
