"""The load: k6 (bench/k6/board.js) run once against one server, with the CPU the server and k6 used."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procfs import cpu_seconds, descendants, idle_seconds, pin, tree_cpu_seconds
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
    # PostgreSQL's server on this machine (its postmaster: bench.postgres.local_server_pid), whose processes'
    # CPU each run reports as database_cores; None: the database is inside the board (SQLite) or elsewhere.
    database_pid: int | None = None


@dataclass(frozen=True)
class Run:
    """One k6 run against one server: successful calls per second and latency of the measured phase, and
    the CPU the server (its process tree) and k6 used over the whole run, in cores; with it what the
    database's server used (None: no server of its own on this machine) and what the machine left idle, so
    that the cores of a run add up to the machine's."""

    rps: float
    p50_ms: float
    p99_ms: float
    calls: int
    errors: int
    server_cores: float
    k6_cores: float
    database_cores: float | None = None
    idle_cores: float | None = None


def run_k6(
    load: Load, server: Server, operation: str, concurrency: int, env: Mapping[str, str] | None = None
) -> Run:
    """Run bench/k6/board.js once against ``server`` (``env``: more of the script's variables, e.g.
    REQUEST_ID); raise RuntimeError with k6's output when it fails."""
    return run_k6_side_by_side(load, [server], operation, concurrency, env)[0]


def run_k6_side_by_side(
    load: Load,
    servers: Sequence[Server],
    operation: str,
    concurrency: int,
    env: Mapping[str, str] | None = None,
    *,
    cores: tuple[int, int] | None = None,
) -> list[Run]:
    """One k6 per server, all started at once and each measured over the same seconds: servers compared
    this way share whatever else the machine does in those seconds (the A/B of ``on_off_cost``). ``cores``:
    (the servers' CPU, the k6s' CPU) for the run, so that the servers share one core's time and speed.
    Raise RuntimeError with k6's output when one fails."""
    started_runs = []
    for index, server in enumerate(servers):
        summary = load.work / f"k6-summary-{index}.json"
        summary.unlink(missing_ok=True)
        k6_env = {
            **os.environ,
            **(env or {}),
            "K6_NO_USAGE_REPORT": "true",
            "TARGET": server.target,
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
        started_runs.append((server, summary, k6_env))
    cmd = [str(load.k6), "run", "--quiet", "--no-color", "--no-usage-report", "--address", "", str(K6_SCRIPT)]
    pids = [[p for proc in s.procs for p in (proc.pid, *descendants(proc.pid))] for s in servers]
    everywhere = os.sched_getaffinity(0)
    if cores is not None:
        for server_pids in pids:
            pin(server_pids, {cores[0]})
    server_cpu = [cpu_seconds(p) for p in pids]
    database_cpu = {} if load.database_pid is None else tree_cpu_seconds(load.database_pid)
    idle = idle_seconds()
    started = time.monotonic()
    logs = [load.work / f"k6-output-{index}.log" for index in range(len(servers))]
    k6s = []
    for (_, _, k6_env), log in zip(started_runs, logs, strict=True):
        pinned = [] if cores is None else ["taskset", "--cpu-list", str(cores[1])]
        with log.open("w") as out:
            k6s.append(subprocess.Popen([*pinned, *cmd], env=k6_env, stdout=out, stderr=subprocess.STDOUT))
    try:
        codes, k6_cpu, walls = _wait_all(k6s, started, started + load.warmup + load.seconds + 120)
    finally:
        if cores is not None:
            for server_pids in pids:
                pin(server_pids, everywhere)
    outputs = [(codes[k6.pid], log.read_text(errors="replace")) for k6, log in zip(k6s, logs, strict=True)]
    k6_seconds_all = [k6_cpu[k6.pid] for k6 in k6s]
    wall = max(walls)
    # Shared by servers measured side by side: the database's and the machine's, not one server's. The
    # database's processes are read again at the end: a pool that grows starts new ones during a run.
    database_cores = None
    if load.database_pid is not None:
        after = tree_cpu_seconds(load.database_pid)
        database_cores = sum(cpu - database_cpu.get(pid, 0.0) for pid, cpu in after.items()) / wall
    idle_cores = (idle_seconds() - idle) / wall
    runs = []
    for (server, summary, _), (code, output), cpu_before, server_pids, k6_seconds in zip(
        started_runs, outputs, server_cpu, pids, k6_seconds_all, strict=True
    ):
        if code != 0 or not summary.exists():
            raise RuntimeError(f"k6 failed ({code}) against {server.target}:\n{output[-3000:]}")
        server_cores = (cpu_seconds(server_pids) - cpu_before) / wall
        runs.append(
            _read_summary(
                load, server, summary=summary, operation=operation, concurrency=concurrency, output=output,
                server_cores=server_cores, k6_cores=k6_seconds / wall,
                database_cores=database_cores, idle_cores=idle_cores,
            )
        )  # fmt: skip
    return runs


def _wait_all(
    k6s: Sequence[subprocess.Popen[bytes]], started: float, deadline: float
) -> tuple[dict[int, int], dict[int, float], list[float]]:
    """Wait for every k6 (killed past ``deadline``: RuntimeError); their exit codes and CPU seconds by pid,
    and the seconds from ``started`` at which each ended."""
    codes: dict[int, int] = {}
    k6_cpu: dict[int, float] = {}
    walls = []
    while len(codes) < len(k6s):
        for k6 in k6s:
            if k6.pid in codes:
                continue
            pid, status, usage = os.wait4(k6.pid, os.WNOHANG)  # its own CPU, which RUSAGE_CHILDREN mixes
            if pid:
                k6.returncode = codes[k6.pid] = os.waitstatus_to_exitcode(status)
                k6_cpu[k6.pid] = usage.ru_utime + usage.ru_stime
                walls.append(time.monotonic() - started)
        if time.monotonic() > deadline:
            for k6 in k6s:
                k6.kill()
                k6.wait()
            raise RuntimeError(f"k6 did not finish within {deadline - started:.0f} s")
        time.sleep(0.05)
    return codes, k6_cpu, walls


def _read_summary(
    load: Load,
    server: Server,
    *,
    summary: Path,
    operation: str,
    concurrency: int,
    output: str,
    server_cores: float,
    k6_cores: float,
    database_cores: float | None,
    idle_cores: float,
) -> Run:
    target = server.target
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
            output.strip()[-500:],
        )
    ok_rps = (calls - errors) / load.seconds
    p50, p99 = latency.get("p(50)", 0.0), latency.get("p(99)", 0.0)
    return Run(ok_rps, p50, p99, calls, errors, server_cores, k6_cores, database_cores, idle_cores)
