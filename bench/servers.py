"""The servers a benchmark measures: started in a process group of their own, awaited until they say where
they listen, stopped with their group (seg_handler/launcher/processes.py, as `make run` and the tests do)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from board_server.runtime.config import add_arguments, load_settings
from seg_handler.launcher import processes


@dataclass
class Server:
    """A started server process (or several, for the reuse-port floor) and where to reach it."""

    name: str
    target: str
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

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


@dataclass(frozen=True)
class BoardFeatures:
    """What the installed board-server offers (read from --help: the bench runs against old and new)."""

    processes: bool
    metrics: bool
    limits: bool = False  # --client-limits, to measure the per-client limits on vs off

    @classmethod
    def probe(cls, executable: Path) -> BoardFeatures:
        """Raise SystemExit with its output when board-server cannot even print its help."""
        done = subprocess.run([str(executable), "--help"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"`board-server --help` failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return cls(
            processes="--processes" in done.stdout,
            metrics="--metrics-address" in done.stdout,
            limits="--client-limits" in done.stdout,
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


# The settings that bound what one client may take of a board (docs/operations.md, "Limits").
LIMIT_SETTINGS = (
    "max_calls_per_peer", "request_timeout_s", "upload_timeout_s", "max_message_bytes", "max_concurrent_rpcs",
    "max_streams_per_connection", "call_timeout_s", "trusted_proxies", "max_attachment_bytes",
)  # fmt: skip


def board_limits(flags: Sequence[str]) -> dict[str, Any]:
    """The limits of a board started with ``flags`` (and no BOARD_* environment, as ``clean_env`` gives it):
    what a bench records beside its figures. Flags that are not settings are ignored."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    known, _ = parser.parse_known_args(list(flags))
    settings = load_settings(known, env={}, cwd=Path.cwd())
    return {name: getattr(settings, name) for name in LIMIT_SETTINGS}
