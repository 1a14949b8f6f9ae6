"""Starting, watching and stopping servers: `make run`, the tests and the benchmarks start theirs here.

Each server starts in a session (so a process group) of its own, with stdout and stderr in its log file,
so that whatever it starts (TorchServe's Python workers, the board's server processes) goes with it when the
group is stopped. A group is signalled only while its id is certainly still ours: pids wrap within minutes on
a busy machine, and a stale killpg would stop someone else's server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seg_handler.launcher.forks import ForkServer

logger = logging.getLogger(__name__)

# What the board, the benchmark floor and anything else started here log once they accept calls.
LISTENING = re.compile(r"listening on (\S+):(\d+)")


class StartError(RuntimeError):
    """A server exited before it said where it listens, or did not say so in time; the message ends with the
    end of its log."""


@dataclass(frozen=True)
class Listening:
    """What a server's ``listening on HOST:PORT`` line said, and the whole line (it may say more)."""

    host: str
    port: int
    line: str


# Ports picked for servers that are told their port: below the kernel's ephemeral range, so that nothing
# started meanwhile (a server on port 0, an outgoing connection) is given the port before its server binds it.
PICKED_PORTS_FROM = 20000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1", *, span: tuple[int, int] | None = None) -> int:
    """A TCP port on ``host`` that nobody uses right now, for a server started with it.

    A random one between 20000 and the kernel's ephemeral range (or in ``span``: [low, high)): the kernel
    never hands those out on its own, so only another picker could take it before the server binds it, and
    with thousands to choose from at random that is rare (a server that fails to bind is started again on
    new ports). Where the ephemeral range starts too low to leave room, the kernel's pick for port 0.
    """
    low, high = span if span is not None else (PICKED_PORTS_FROM, _ephemeral_low())
    rng = random.SystemRandom()
    if high - low >= 1000:
        for _ in range(100):
            port = rng.randrange(low, high)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start(
    args: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    forks: ForkServer | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a session of its own, stdin closed, stdout and stderr appended to ``log_path``.

    ``env`` is the whole environment of the process (None: this process's). With ``forks``, the program is
    forked from that fork server (which imported it already) instead of executed.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    popen = subprocess.Popen if forks is None else forks.popen
    with log_path.open("ab") as log:
        return popen(
            list(args),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )


def log_size(log_path: Path) -> int:
    """How much ``log_path`` holds now: pass it as ``since`` to read only what a new start writes to it."""
    try:
        return log_path.stat().st_size
    except FileNotFoundError:
        return 0


def log_tail(log_path: Path, chars: int = 3000) -> str:
    """The end of a log, for error messages ("" when there is none)."""
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_for(
    description: str, predicate: Callable[[], object], timeout: float, interval: float = 0.1
) -> None:
    """Poll ``predicate()`` until it returns something truthy; an exception counts as "not yet".

    Raises TimeoutError naming ``description`` and the last exception.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # the thing being waited for is not up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {description}: {last_exc!r}")


def wait_listening(
    proc: subprocess.Popen[bytes], log_path: Path, *, timeout: float = 60.0, since: int = 0
) -> Listening:
    """Until the log (from byte ``since`` on) says ``listening on HOST:PORT``; what it said.

    Raises StartError, with the end of the log, when the process exits first or ``timeout`` passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError), log_path.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
            if match := LISTENING.search(text):
                end = text.find("\n", match.end())
                line = text[text.rfind("\n", 0, match.start()) + 1 : end if end >= 0 else None]
                return Listening(match.group(1), int(match.group(2)), line.strip())
        if proc.poll() is not None:
            raise StartError(
                f"{_program(proc)} exited with {proc.returncode} before it listened:\n{log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise StartError(
                f"{_program(proc)} did not say 'listening on' within {timeout:g}s:\n{log_tail(log_path)}"
            )
        time.sleep(0.05)


def _program(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args if isinstance(proc.args, list | tuple) else [proc.args]
    return f"{Path(str(args[0])).name} (pid {proc.pid})"


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a zombie keeps its pid and its group id until its parent reaps it: us, or the
    fork server that forked it, seg_handler/launcher/forks.py)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie_child(pid) and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _is_zombie_child(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False


def recorded_pid(pid_file: Path, marker: bytes) -> int | None:
    """The pid in ``pid_file`` while that process runs and its command line holds ``marker`` (so that a pid
    reused by someone else is not taken for our server), else None."""
    try:
        pid = int(pid_file.read_text().strip())
        running = is_running(pid) and marker in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if running else None


def group_members(pgid: int) -> list[int]:
    """Processes (other than ``pgid`` itself) in process group ``pgid``, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pgid:
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def _signal_group(pid: int, timeout: float, sig: int) -> None:
    """``sig`` to the group led by ``pid``, up to ``timeout`` s for the leader to exit, then SIGKILL to the
    group while its id is still ours: the leader running, our child kept a zombie (not reaped) until now, or
    members left that pin the id."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_running(pid):
        time.sleep(0.05)
    if is_running(pid):
        logger.warning("pid %d ignored signal %d for %gs; killing its process group", pid, sig, timeout)
    if is_running(pid) or _is_zombie_child(pid) or group_members(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def stop_process(pid: int, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Stop the process group led by ``pid`` (a pid from a pid file, or a child of ours) and reap the leader
    if it is our child. The caller knows ``pid`` is still the server it started (e.g. its command line)."""
    _signal_group(pid, timeout, sig)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Stop ``proc`` and its process group, then reap it (its exit status stays in ``proc.returncode``).

    Nothing is signalled once ``proc`` has been reaped (by an earlier wait or poll): its pid, and so its
    group id, may already belong to someone else.
    """
    if proc.returncode is not None:
        return
    _signal_group(proc.pid, timeout, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
