"""The load: k6 (bench/k6/board.js) run once against one server, with the CPU the server and k6 used."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.procfs import cpu_seconds, descendants
from bench.records import ROOT
from bench.seeding import Seed
from bench.servers import Server

logger = logging.getLogger(__name__)

K6_SCRIPT = ROOT / "bench" / "k6" / "board.js"
PROTO_DIR = ROOT / "protos"


@dataclass(frozen=True)
class Load:
    """How every k6 run is made."""

    k6: Path
    seconds: float
    warmup: float
    work: Path
    ids_file: Path
    seeded: Seed


@dataclass(frozen=True)
class Run:
    """One k6 run against one server: successful calls per second and latency of the measured phase, and
    the CPU the server (its process tree) and k6 used over the whole run, in cores."""

    rps: float
    p50_ms: float
    p99_ms: float
    calls: int
    errors: int
    server_cores: float
    k6_cores: float


def run_k6(
    load: Load, server: Server, operation: str, concurrency: int, env: Mapping[str, str] | None = None
) -> Run:
    """Run bench/k6/board.js once against ``server`` (``env``: more of the script's variables, e.g.
    REQUEST_ID); raise RuntimeError with k6's output when it fails."""
    target = server.target
    summary = load.work / "k6-summary.json"
    summary.unlink(missing_ok=True)
    k6_env = {
        **os.environ,
        **(env or {}),
        "K6_NO_USAGE_REPORT": "true",
        "TARGET": target,
        "PROTO_DIR": str(PROTO_DIR),
        "OPERATION": operation,
        "VUS": str(concurrency),
        "SECONDS": str(load.seconds),
        "WARMUP": str(load.warmup),
        "IDS_FILE": str(load.ids_file),
        "USER_ID": str(load.seeded.user_id),
        "TOKEN": load.seeded.token,
        "SUMMARY": str(summary),
        "PROTOCOL": server.protocol,
    }
    cmd = [str(load.k6), "run", "--quiet", "--no-color", "--no-usage-report", "--address", "", str(K6_SCRIPT)]
    pids = [p for proc in server.procs for p in (proc.pid, *descendants(proc.pid))]
    server_cpu, k6_cpu, started = (
        cpu_seconds(pids),
        resource.getrusage(resource.RUSAGE_CHILDREN),
        time.monotonic(),
    )
    done = subprocess.run(
        cmd, env=k6_env, capture_output=True, text=True, timeout=load.warmup + load.seconds + 120, check=False
    )
    wall = time.monotonic() - started
    server_cores = (cpu_seconds(pids) - server_cpu) / wall
    k6_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    k6_cores = (k6_after.ru_utime + k6_after.ru_stime - k6_cpu.ru_utime - k6_cpu.ru_stime) / wall
    if done.returncode != 0 or not summary.exists():
        raise RuntimeError(
            f"k6 failed ({done.returncode}) against {target}:\n{(done.stdout + done.stderr)[-3000:]}"
        )
    metrics = json.loads(summary.read_text())["metrics"]
    calls = int(metrics.get("calls{phase:measure}", {}).get("values", {}).get("count", 0))
    errors = int(metrics.get("failed_calls{phase:measure}", {}).get("values", {}).get("count", 0))
    duration = "http_req_duration" if server.protocol == "connect" else "grpc_req_duration"
    latency = metrics.get(f"{duration}{{phase:measure}}", {}).get("values", {})
    if errors:
        logger.warning(
            "%s %s c%d: %d of %d calls failed: %s",
            target,
            operation,
            concurrency,
            errors,
            calls,
            done.stderr.strip()[-500:],
        )
    ok_rps = (calls - errors) / load.seconds
    p50, p99 = latency.get("p(50)", 0.0), latency.get("p(99)", 0.0)
    return Run(ok_rps, p50, p99, calls, errors, server_cores, k6_cores)
