"""The servers a benchmark measures: started in a process group of their own, awaited until they say where
they listen, stopped with their group (seg_handler/launcher/processes.py, as `make run` and the tests do)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from seg_handler.launcher import processes

# The board's limits (docs/operations.md, Limits) that a bench's load from one address and one user reaches:
# raised for every bench, still counted (so their cost is in the figures), and recorded in its results.
# Every other limit runs as shipped.
BENCH_LIMITS: dict[str, str] = {
    "--sign-in-failures-per-peer": "1000000",
    "--sign-ups-per-peer": "1000000",
    "--writes-per-user-per-minute": "1000000000",
}


def limit_flags(features: BoardFeatures | None = None) -> list[str]:
    """``BENCH_LIMITS`` as board-server flags (none for a board-server from before the limits)."""
    if features is not None and not features.limits:
        return []
    return [part for flag, value in BENCH_LIMITS.items() for part in (flag, value)]


def limits_record(features: BoardFeatures | None = None) -> dict[str, str]:
    """What a result file records of the limits its board ran with."""
    if features is not None and not features.limits:
        return {"all": "this board-server has no limits of its own"}
    return {**BENCH_LIMITS, "every other limit": "as shipped (docs/operations.md, Limits)"}


@dataclass
class Server:
    """A started server process (or several, for the reuse-port floor) and where to reach it."""

    name: str
    target: str
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    protocol: str = "grpc"  # or connect: the board's HTTP listener at ``target``

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    def check_alive(self) -> None:
        """Raise RuntimeError with the end of its log when any of its processes has exited."""
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = processes.log_tail(log)
                raise RuntimeError(f"{self.name} (pid {proc.pid}) exited with {proc.returncode}:\n{tail}")


@contextmanager
def running(
    name: str, args: Sequence[str], work: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Iterator[Server]:
    """Start a server that logs 'listening on HOST:PORT' (log in ``work``, run in ``cwd``, default ``work``);
    yield it; stop it and its process group. Raises RuntimeError (StartError) when it does not start."""
    log = work / f"{name}.log"
    since = processes.log_size(log)
    proc = processes.start(args, log, env=env, cwd=cwd or work)
    try:
        listening = processes.wait_listening(proc, log, timeout=120, since=since)
        yield Server(name, f"127.0.0.1:{listening.port}", [proc], [log])
    finally:
        processes.stop(proc)


_WEB = re.compile(r"web app and Connect on http://(\S+?)/?$", re.MULTILINE)


def http_listener(server: Server) -> Server:
    """The board's HTTP listener (Connect) as a server of its own, from the line its log wrote."""
    found = _WEB.search(server.logs[0].read_text(errors="replace"))
    if not found:
        raise RuntimeError(f"{server.name} has no HTTP listener:\n{processes.log_tail(server.logs[0])}")
    return Server(f"{server.name} (Connect)", found.group(1), server.procs, server.logs, protocol="connect")


@dataclass(frozen=True)
class BoardFeatures:
    """What the installed board-server offers (read from --help: the bench runs against old and new)."""

    processes: bool
    metrics: bool
    limits: bool
    http: bool = False

    @classmethod
    def probe(cls, executable: Path) -> BoardFeatures:
        """Raise SystemExit with its output when board-server cannot even print its help."""
        done = subprocess.run([str(executable), "--help"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"`board-server --help` failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return cls(
            processes="--processes" in done.stdout,
            metrics="--metrics-address" in done.stdout,
            limits="--writes-per-user-per-minute" in done.stdout,
            http="--http-address" in done.stdout,
        )


def board_executable() -> Path:
    """The virtualenv's `board-server` entry point (beside this Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "board-server"
    found = beside if beside.exists() else shutil.which("board-server")
    if not found:
        raise SystemExit("board-server not found: run `make install`")
    return Path(found)


def clean_env() -> dict[str, str]:
    """This environment without BOARD_* and OTEL_* variables: the board runs with its defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("BOARD_", "OTEL_"))}
