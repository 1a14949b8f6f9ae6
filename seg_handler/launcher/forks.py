"""A fork server: one process that imports a Python program once and forks a copy of it for each start.

The test suite starts the board a few hundred times; each start of the executable spends more than a
second of CPU importing SQLAlchemy, gRPC, protobuf and the board before it serves. Started from a fork
server, the same program (the same ``main(argv)``, with its own arguments, environment, working directory,
session and standard streams) skips that. The board's own supervisor starts its server processes the same
way (board_server/runtime/supervisor.py).

``ForkServer.popen`` returns a ``subprocess.Popen``: poll, wait, communicate, send_signal and the launcher's
``stop`` work as for a started executable. The fork server is the parent of what it forks and reaps a process
only when asked (poll or wait), so that, as with a child of our own, a pid stays ours until its exit status
has been read.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

_MAX_MESSAGE = 1 << 20
_FD_ENV = "FORK_SERVER_FD"


class ForkServer:
    """A fork server for the program ``entry`` ("module:function", called with the arguments after the
    program's name, returning its exit status), having imported ``preload``.

    Started at the first ``popen``; ``close`` (or the end of this process) ends it, never what it forked.
    """

    def __init__(self, entry: str, preload: Sequence[str] = ()) -> None:
        self.entry = entry
        self.preload = tuple(preload)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def _started(self) -> socket.socket:
        if self._sock is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", __name__, self.entry, *self.preload],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,  # its stderr is ours: an import that fails says why there
                    pass_fds=[theirs.fileno()],
                    env={**os.environ, _FD_ENV: str(theirs.fileno())},
                    start_new_session=True,
                )
            finally:
                theirs.close()
            self._sock = ours
        return self._sock

    def _ask(self, request: tuple[Any, ...], fds: Sequence[int] = ()) -> Any:
        with self._lock:
            sock = self._started()
            socket.send_fds(sock, [json.dumps(request).encode()], list(fds))
            answer = sock.recv(_MAX_MESSAGE)
        if not answer:
            raise ConnectionError("the fork server is gone")
        kind, value = json.loads(answer)
        if kind == "error":
            raise OSError(value)
        return value

    def fork(
        self,
        args: Sequence[str],
        stdio: Sequence[int],
        env: Mapping[str, str],
        cwd: str | None,
        session: bool,
    ) -> int:
        """Fork the program with ``args`` (``args[0]`` its name), standard streams ``stdio`` (three fds,
        which it gets copies of), environment ``env``, in ``cwd``, in a session of its own if ``session``;
        its pid."""
        pid = self._ask(("fork", list(args), dict(env), cwd, session), stdio)
        assert isinstance(pid, int)
        return pid

    def waitpid(self, pid: int, flags: int) -> tuple[int, int]:
        """``os.waitpid(pid, flags)`` in the fork server (flags 0: until it exits)."""
        while True:
            got, status = self._ask(("wait", pid))
            if got or flags & os.WNOHANG:
                return int(got), int(status)
            time.sleep(0.02)

    def popen(
        self,
        args: Sequence[str],
        *,
        stdin: int | None = None,
        stdout: Any = None,
        stderr: Any = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        start_new_session: bool = False,
        text: bool = False,
    ) -> subprocess.Popen[Any]:
        """As ``subprocess.Popen(args, ...)`` with those arguments, the program forked instead of executed."""
        return ForkedProcess(
            self,
            list(args),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(os.environ if env is None else env),
            cwd=cwd,
            start_new_session=start_new_session,
            text=text,
        )

    def close(self) -> None:
        """End the fork server (what it forked keeps running; stop that by its pid)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                self._proc = None


class ForkedProcess(subprocess.Popen[Any]):
    """A ``subprocess.Popen`` whose program is forked by a ForkServer: the parent's side (pipes, text mode,
    timeouts) is Popen's own; starting and reaping go through the fork server."""

    def __init__(self, server: ForkServer, args: list[str], **kwargs: Any) -> None:
        self._server = server
        super().__init__(args, **kwargs)

    def _execute_child(  # noqa: PLR0917 - Popen's own signature
        self,
        args: list[str],
        executable: Any,
        preexec_fn: Any,
        close_fds: bool,
        pass_fds: Any,
        cwd: Any,
        env: Mapping[str, str],
        startupinfo: Any,
        creationflags: Any,
        shell: bool,
        p2cread: int,
        p2cwrite: int,
        c2pread: int,
        c2pwrite: int,
        errread: int,
        errwrite: int,
        *rest: Any,
    ) -> None:
        start_new_session = bool(rest[-2])
        given = (p2cread, c2pwrite, errwrite)
        stdio = [fd if fd != -1 else default for fd, default in zip(given, (0, 1, 2), strict=True)]
        directory = None if cwd is None else os.fspath(cwd)
        try:
            self.pid = self._server.fork(args, stdio, env, directory, start_new_session)
            self._child_created = True
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)  # type: ignore[attr-defined]

    def _try_wait(self, wait_flags: int) -> tuple[int, int]:
        try:
            return self._server.waitpid(self.pid, wait_flags)
        except (OSError, EOFError):  # the fork server is gone, and with it the exit status
            return self.pid, 0

    def _internal_poll(self, _deadstate: int | None = None, **unused: Any) -> int | None:
        if self.returncode is None and self._waitpid_lock.acquire(False):  # type: ignore[attr-defined]
            try:
                if self.returncode is None:
                    pid, status = self._try_wait(os.WNOHANG)
                    if pid == self.pid:
                        self._handle_exitstatus(status)  # type: ignore[attr-defined]
            finally:
                self._waitpid_lock.release()  # type: ignore[attr-defined]
        return self.returncode


# --- the fork server's own side -----------------------------------------------------------------------------


def _answer(sock: socket.socket, kind: str, value: object) -> None:
    sock.send(json.dumps([kind, value]).encode())


def _serve(sock: socket.socket) -> tuple[list[str], dict[str, str], str | None, bool, list[int]] | None:
    """Answer requests until the other side closes (None), or, in a forked copy, what it is to run."""
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(sock, _MAX_MESSAGE, 3)
        except (ConnectionError, OSError):
            return None
        if not message:
            return None
        request = json.loads(message)
        if request[0] == "fork":
            _, args, env, cwd, session = request
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as exc:
                answer: tuple[str, object] = ("error", f"fork: {exc}")
                pid = -1
            else:
                answer = ("pid", pid)
            if pid == 0:
                return args, env, cwd, session, fds
            for fd in fds:  # the copy (or nobody, when the fork failed) has them now
                os.close(fd)
            _answer(sock, *answer)
        elif request[0] == "wait":
            try:
                _answer(sock, "status", os.waitpid(request[1], os.WNOHANG))
            except ChildProcessError as exc:
                _answer(sock, "error", f"waitpid: {exc}")


def _become(args: list[str], env: dict[str, str], cwd: str | None, session: bool, fds: list[int]) -> None:
    """In the forked copy: take the streams, session, directory, environment and arguments it was given."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    if session:
        os.setsid()
    if cwd is not None:
        os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = list(args)


def _entry(spec: str) -> Callable[[list[str]], int]:
    module, _, function = spec.partition(":")
    found: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
    return found


def main() -> int:
    """``python -m seg_handler.launcher.forks ENTRY [MODULE ...]`` with the socket's fd in FORK_SERVER_FD."""
    entry = _entry(sys.argv[1])
    for module in sys.argv[2:]:
        importlib.import_module(module)
    sock = socket.socket(fileno=int(os.environ.pop(_FD_ENV)))
    job = _serve(sock)
    if job is None:
        return 0
    sock.close()
    args, env, cwd, session, fds = job
    try:
        _become(args, env, cwd, session, fds)
    except OSError:
        traceback.print_exc()
        os._exit(127)
    return entry(args[1:])


if __name__ == "__main__":
    sys.exit(main())
