"""A supervisor and N server processes sharing the port (SO_REUSEPORT), for a board that uses N cores.

Python runs one thread of Python at a time per process, so a single board process tops out at one core's
worth of request handling; N processes accepting on one port (the kernel spreads connections over them)
use N cores. The supervisor (the process started as ``board-server``):

1. reserves the port (port 0 becomes a number) once the database is migrated;
2. starts N server processes, waits until each is serving, and only then logs ``listening on HOST:PORT``.
   They are forked from a fork server (``forkserver``) that imported the server's modules once: no state of
   the supervisor (its threads, its database connections) is inherited, and neither a start nor a restart
   after a crash pays for the imports again;
3. rotates the audit log that all of them append to; restarts a server process that died (kill -9, OOM),
   and on SIGTERM/SIGINT asks every one to drain and stop.

Everything shared lives in the database: the tagging queue (claims are per row, so processes and replicas
never tag an attachment twice), sessions, the page-token key. SQLite writers of several processes take
turns (storage/group_commit.py). Tagging threads are spread over the processes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.queues
import os
import signal
import time
from dataclasses import dataclass, replace
from typing import Any

from board_server.runtime.config import Settings
from board_server.runtime.logs import AuditRotator, audit_append_handler, configure_logging, route_audit
from board_server.runtime.serve import announce_http, run_event_loop, serve_until_signalled
from board_server.storage.engine import modules_for

logger = logging.getLogger("board_server")

# What the fork server imports before it forks the first server process (the rest of _server_process's
# imports come with them): imported once, shared by every server process.
SERVER_MODULES = (
    "board_server.runtime.assemble",
    "board_server.runtime.metrics",
    "board_server.api.http",
    "uvloop",
)

# A server process that dies this many times within RESTART_WINDOW_S is not restarted again.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


def tagging_share(total: int, processes: int, index: int) -> int:
    """How many of ``total`` tagging threads process ``index`` of ``processes`` runs."""
    return total // processes + (1 if index < total % processes else 0)


@dataclass(frozen=True)
class ServerProcessPlan:
    """What one server process is to do: serve ``settings`` on ``port`` with ``tagging_threads`` taggers."""

    settings: Settings
    port: int
    index: int
    tagging_threads: int
    http_port: int | None = None


def _server_process(
    plan: ServerProcessPlan,
    ready: multiprocessing.queues.Queue[Any],
) -> None:
    """Entry point of one server process (spawned by the supervisor)."""
    settings, port, index, tagging_threads = plan.settings, plan.port, plan.index, plan.tagging_threads
    http_port = plan.http_port
    configure_logging(settings.log_level)
    route_audit(audit_append_handler(settings))
    # Ctrl-C reaches every process of the terminal's group; only the supervisor's SIGTERM starts the drain,
    # so that the supervisor decides when and in which order everything stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run_event_loop(
            settings,
            serve_until_signalled(
                settings,
                port=port,
                tagging_threads=tagging_threads,
                on_ready=lambda bound, _http: ready.put(("ready", index, bound)),
                signals=(signal.SIGTERM,),
                http_port=http_port,
            ),
        )
    except Exception as exc:
        logger.exception("server process %d failed", index)
        ready.put(("failed", index, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from exc


@dataclass
class _Child:
    index: int
    process: multiprocessing.process.BaseProcess
    started: float


class Supervisor:
    """Starts, watches and stops the server processes (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([*SERVER_MODULES, *modules_for(settings.database_url)])
        self._ready: multiprocessing.queues.Queue[Any] = self._context.Queue()
        self._children: dict[int, _Child] = {}
        self._deaths: list[float] = []
        self._stopping = False
        self.port = 0
        self.http_port: int | None = None

    def _spawn(self, index: int) -> _Child:
        share = tagging_share(self.settings.tagging_workers, self.settings.processes, index)
        process = self._context.Process(
            target=_server_process,
            args=(ServerProcessPlan(self.settings, self.port, index, share, self.http_port), self._ready),
            name=f"board-server-{index}",
            daemon=False,
        )
        process.start()
        child = _Child(index, process, time.monotonic())
        self._children[index] = child
        return child

    def _await_ready(self, indexes: set[int], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(indexes)
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"server processes {sorted(waiting)} did not start within {timeout:.0f}s")
            try:
                kind, index, detail = self._ready.get(timeout=min(remaining, 1.0))
            except Exception:  # queue.Empty: check that nobody died silently
                for index in waiting:
                    if not self._children[index].process.is_alive():
                        raise RuntimeError(f"server process {index} exited while starting") from None
                continue
            if kind == "failed":
                raise RuntimeError(f"server process {index} could not start: {detail}")
            waiting.discard(index)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status."""
        from board_server.api.server import reserve_port

        rotator = AuditRotator(self.settings)
        rotator.start()
        _, port_text = self.settings.address.rsplit(":", 1)
        reservation = reserve_port(self.settings.host, int(port_text))
        self.port = int(reservation.getsockname()[1])
        http_reservation = None
        if self.settings.http_address:
            http_host, http_port_text = self.settings.http_address.rsplit(":", 1)
            try:
                http_reservation = reserve_port(http_host, int(http_port_text))
            except OSError as exc:
                logger.error(
                    "cannot start: the HTTP listener cannot bind %s: %s", self.settings.http_address, exc
                )
                reservation.close()
                rotator.stop()
                return 1
            self.http_port = int(http_reservation.getsockname()[1])
        metrics = _SupervisorMetrics(self.settings) if self.settings.metrics_address else None
        stop_requested = False

        def request_stop(signum: int, _frame: object) -> None:
            nonlocal stop_requested
            stop_requested = True

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if metrics is not None:
                metrics.start()
            for index in range(self.settings.processes):
                self._spawn(index)
            self._await_ready(set(self._children))
            if self.http_port is not None:
                announce_http(self.settings, self.http_port)
            logger.info(
                "listening on %s:%d (%d processes, pids %s)",
                self.settings.host,
                self.port,
                len(self._children),
                ",".join(str(c.process.pid) for c in self._children.values()),
            )
            while not stop_requested:
                sentinels = [c.process.sentinel for c in self._children.values()]
                multiprocessing.connection.wait(sentinels, timeout=0.5)
                if not stop_requested and not self._restart_dead():
                    return 1
            logger.info("received a stop signal; draining for up to %.1fs", self.settings.grace_seconds)
            return 0
        except RuntimeError as exc:
            logger.error("cannot start: %s", exc)
            return 1
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            self._stop_children()
            if metrics is not None:
                metrics.stop()
            reservation.close()
            if http_reservation is not None:
                http_reservation.close()
            rotator.stop()
            logger.info("stopped")

    def _restart_dead(self) -> bool:
        """Restart server processes that died; False when they keep dying (give up)."""
        for index, child in list(self._children.items()):
            if child.process.is_alive():
                continue
            now = time.monotonic()
            self._deaths = [t for t in self._deaths if now - t < RESTART_WINDOW_S] + [now]
            logger.error(
                "server process %d (pid %s) exited with %s; restarting it",
                index,
                child.process.pid,
                child.process.exitcode,
            )
            if self.settings.metrics_address and child.process.pid is not None:
                from board_server.runtime.metrics import mark_process_dead

                mark_process_dead(child.process.pid)
            if len(self._deaths) > MAX_RESTARTS:
                logger.error(
                    "server processes died %d times within %.0fs; giving up",
                    len(self._deaths),
                    RESTART_WINDOW_S,
                )
                return False
            self._spawn(index)
            try:
                self._await_ready({index})
            except RuntimeError as exc:
                logger.error("restart failed: %s", exc)
        return True

    def _stop_children(self) -> None:
        for child in self._children.values():
            if child.process.is_alive() and child.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_seconds + 10.0
        for child in self._children.values():
            child.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if child.process.is_alive():
                logger.warning("server process %d did not stop in time; killing it", child.index)
                child.process.kill()
                child.process.join(timeout=5)


class _SupervisorMetrics:
    """The /metrics endpoint of the supervisor: every server process's samples summed, database gauges."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._dir: str | None = None
        self._server: Any = None
        self._database: Any = None

    def start(self) -> None:
        """Prepare the samples folder (before any server process starts) and serve /metrics."""
        from board_server.runtime.database import database_for
        from board_server.runtime.metrics import (
            multiprocess_registry,
            prepare_multiprocess_dir,
            serve_metrics,
        )

        self._dir = prepare_multiprocess_dir()
        self._database = database_for(replace(self._settings, worker_threads=1))
        try:
            self._server = serve_metrics(
                self._settings.metrics_address, multiprocess_registry(self._dir), self._database
            )
        except OSError as exc:
            raise RuntimeError(f"could not serve metrics on {self._settings.metrics_address}: {exc}") from exc

    def stop(self) -> None:
        from board_server.runtime.metrics import remove_multiprocess_dir

        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._database is not None:
            self._database.dispose()
        if self._dir is not None:
            remove_multiprocess_dir(self._dir)
