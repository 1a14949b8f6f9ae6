"""Test support shared by every room: free ports, real processes always stopped by pid, polling.

The processes themselves are started, awaited and stopped by seg_handler/launcher/processes.py, the same code
that `make run` and the benchmarks use.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from seg_handler.launcher import processes
from seg_handler.launcher.forks import ForkServer
from seg_handler.launcher.processes import Listening, free_port, wait_for

__all__ = ["REPO_ROOT", "Processes", "free_port", "photo_jpeg", "run_port", "wait_for"]

# Ports for the servers `launcher run` starts on ports it is given (the README tour, the launch test: one
# work group, so one at a time). No other picker uses this span, so no test can take one of them in the
# seconds between the pick and TorchServe's bind: a TorchServe that fails to bind ends `run`, with no retry.
RUN_PORTS = (10000, 20000)
_RUN_PORTS_GIVEN: set[int] = set()


def run_port() -> int:
    """A free port of ``RUN_PORTS``, never one this process gave before (a tour's ten picks, none bound yet
    when the next is made, would otherwise meet one time in two hundred)."""
    while (port := free_port(span=RUN_PORTS)) in _RUN_PORTS_GIVEN:
        pass
    _RUN_PORTS_GIVEN.add(port)
    return port


REPO_ROOT = Path(__file__).resolve().parent.parent


class Processes:
    """Starts real subprocesses and guarantees they are stopped, by pid, at teardown.

    Each process gets its own process group so that children (e.g. TorchServe's Python workers) go with it.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[subprocess.Popen[bytes]] = []

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(
        self,
        args: Sequence[str],
        *,
        name: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        forks: ForkServer | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` with stdout+stderr to ``<log_dir>/<name>.log`` and ``env`` over this environment
        (forked from ``forks`` when given)."""
        env = {**os.environ, **(env or {})}
        proc = processes.start(args, self.log_path(name), env=env, cwd=cwd, forks=forks)
        self._procs.append(proc)
        return proc

    def wait_listening(self, proc: subprocess.Popen[bytes], name: str, timeout: float = 60.0) -> Listening:
        """Until ``name``'s log says ``listening on HOST:PORT``; raises StartError (a RuntimeError) with the
        log when the process exits first or ``timeout`` passes."""
        return processes.wait_listening(proc, self.log_path(name), timeout=timeout)

    def log_text(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        """Signal the process group of ``proc``, wait, then SIGKILL what is left of the group; only while
        ``proc`` is unreaped (a reaped leader's pid may already lead someone else's group)."""
        processes.stop(proc, timeout, sig)

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            self.stop(proc)
        self._procs.clear()


def photo_jpeg() -> bytes:
    """A small scene (sky, grass, a ball) standing in for a reader's photo."""
    image = Image.new("RGB", (320, 240), (120, 170, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 170, 320, 240), fill=(60, 140, 60))
    draw.ellipse((110, 90, 210, 200), fill=(120, 80, 40))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()
