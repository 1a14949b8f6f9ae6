"""Test support shared by every room: free ports, real processes always stopped by pid, polling."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from seg_handler.launch import free_port

__all__ = ["REPO_ROOT", "Processes", "free_port", "wait_for"]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


class Processes:
    """Starts real subprocesses and guarantees they are stopped, by pid, at teardown.

    Each process gets its own process group so that children (e.g. TorchServe's Python workers) go with it.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        args: Sequence[str],
        *,
        name: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` with stdout+stderr to ``<log_dir>/<name>.log``; return the Popen."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            list(args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        log.close()
        self._procs.append(proc)
        return proc

    def log_text(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        """Signal the process group of ``proc``, wait, then SIGKILL what is left of the group.

        The group is only signalled while its leader is unreaped (alive or a zombie): a reaped leader's pid
        may already belong to someone else's new process group (pids wrap within minutes under the suite's
        load), and a stale killpg would stop an unrelated server.
        """
        if proc.returncode is not None:
            return  # reaped earlier (by a test's wait): its group id is no longer ours to signal
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        if not _exited_unreaped(proc.pid, timeout):
            logger.warning("pid %d ignored signal %d; killing", proc.pid, sig)
        # Whatever is left in the group (children that outlived their parent) goes too; the zombie leader
        # still holds the id, so the group is ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            self.stop(proc)
        self._procs.clear()


def _exited_unreaped(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``pid`` to exit, leaving it a zombie (not reaped); True if it exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True  # not our child any more (already reaped)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def wait_for(predicate_desc: str, predicate: object, timeout: float, interval: float = 0.1) -> None:
    """Poll ``predicate()`` until it returns truthy; raise TimeoutError naming ``predicate_desc``."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # the thing being waited for is not up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {predicate_desc}: {last_exc!r}")
