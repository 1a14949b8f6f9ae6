"""The board server that `run` starts beside TorchServe, wired to it as production wires it, and the wait
until every one of its processes answers its health check, over gRPC and on its HTTP listener."""

from __future__ import annotations

import http.client
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from seg_handler.launcher import processes
from seg_handler.launcher.settings import LaunchError, ServeSettings
from seg_handler.launcher.sockets import accepting_process

logger = logging.getLogger(__name__)

SERVICE = "board.v1.BoardService"
# The supervisor's line once every server process serves: "listening on HOST:PORT (N processes, pids a,b)".
_PIDS = re.compile(r"pids ([\d,]+)")
# The line before it when the HTTP listener is on: "web app and Connect on http://HOST:PORT/".
_WEB_APP = re.compile(r"web app and Connect on (https?://\S+?)/?$", re.MULTILINE)
# What answers whether a process serves, and which process took the connection: (pid or None, status).
Probe = Callable[[str, Sequence[int]], tuple[int | None, str]]


@dataclass(frozen=True)
class RunningBoard:
    """A started board and the addresses it answers on (its ports, even where the settings said 0)."""

    proc: subprocess.Popen[bytes]
    address: str
    web_url: str | None = None


def board_command(settings: ServeSettings) -> list[str] | None:
    """board-server tagging through this TorchServe's gRPC API with the inference key alone (or through the
    OIP server); None when the board is not installed."""
    exe = Path(sys.executable).parent / "board-server"
    found = str(exe) if exe.exists() else shutil.which("board-server")
    if not found:
        return None
    # TorchServe: the inference key alone, never the management key; the OIP server takes no key (loopback).
    keys = (
        ["--segmentation-token-file", str(settings.inference_key_file)] if settings.serving != "oip" else []
    )
    return [
        found,
        "--address",
        settings.board_address,
        "--segmentation-protocol",
        settings.serving,
        "--segmentation-target",
        settings.grpc_inference_target,
        *keys,
        "--segmentation-model",
        settings.model_name,
        "--metrics-address",
        settings.board_metrics_address,
        "--http-address",
        settings.board_http_address,
    ]


def start(settings: ServeSettings) -> RunningBoard | None:
    """Start the board (its log in ``settings.board_log_file``) and return once every one of its processes
    answers SERVING; None when board-server is not installed.

    Raises LaunchError, with the end of its log, when it exits or is not serving within
    ``settings.ready_timeout_s``.
    """
    command = board_command(settings)
    if command is None:
        return None
    log = settings.board_log_file
    since = processes.log_size(log)
    proc = processes.start(command, log)
    try:
        listening = processes.wait_listening(proc, log, timeout=settings.ready_timeout_s, since=since)
        host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(listening.host, listening.host)
        address = f"{host}:{listening.port}"
        pids = [int(p) for p in match.group(1).split(",")] if (match := _PIDS.search(listening.line)) else []

        def alive() -> bool:
            return processes.is_running(proc.pid)

        wait_every_process_serving(address, pids or [proc.pid], settings.ready_timeout_s, alive)
        web = _WEB_APP.search(log.read_text(errors="replace")[since:])
        web_url = web.group(1) if web else None
        if web_url is not None:
            web_address = web_url.split("://", 1)[1]
            every = pids or [proc.pid]
            wait_every_process_serving(web_address, every, settings.ready_timeout_s, alive, _http_health)
    except processes.StartError as exc:
        processes.stop(proc)
        raise LaunchError(f"the board did not start; see {log}\n{exc}") from exc
    except BaseException:
        processes.stop(proc)
        raise
    return RunningBoard(proc, address, web_url)


def _grpc_health(address: str, pids: Sequence[int]) -> tuple[int | None, str]:
    """grpc.health.v1 Check for board.v1.BoardService on a new connection, and who answered it."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    request = health_pb2.HealthCheckRequest(service=SERVICE)
    # A channel of its own (not the process-wide subchannel pool): a new connection each time.
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
        except grpc.RpcError as exc:
            return None, exc.code().name if isinstance(exc, grpc.Call) else str(exc)
        pid = accepting_process(int(address.rsplit(":", 1)[1]), pids)
        return pid, health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def _http_health(address: str, pids: Sequence[int]) -> tuple[int | None, str]:
    """The HTTP listener's /healthz on a new connection, and who answered it."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=2)
    try:
        connection.request("GET", "/healthz")
        answer = connection.getresponse().read().decode(errors="replace").strip()
        return accepting_process(int(port), pids), answer
    except OSError as exc:
        return None, str(exc)
    finally:
        connection.close()


def wait_every_process_serving(
    address: str,
    pids: Sequence[int],
    timeout: float,
    alive: Callable[[], bool],
    probe: Probe = _grpc_health,
) -> None:
    """Until each of ``pids`` has answered SERVING: grpc.health.v1 Check for board.v1.BoardService, or what
    ``probe`` asks (the HTTP listener's /healthz).

    The processes share one port and the kernel picks which one takes a connection, so fresh connections are
    opened until every process has taken one and answered (which one did is read from /proc). Raises
    LaunchError when ``alive()`` turns False or ``timeout`` passes.
    """
    waiting, last = set(pids), "no answer yet"
    deadline = time.monotonic() + timeout
    while waiting:
        if not alive():
            raise LaunchError(f"board-server exited while starting ({last})")
        if time.monotonic() > deadline:
            raise LaunchError(f"board processes {sorted(waiting)} not SERVING after {timeout:g}s ({last})")
        pid, status = probe(address, pids)
        if pid is not None and status == "SERVING":
            waiting.discard(pid)
        else:
            last = f"pid {pid}: {status}"
            time.sleep(0.1)
