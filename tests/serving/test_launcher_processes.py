"""The launcher's process code with small real processes: the 'listening on' wait, stopping by process group
(and not once the leader is reaped), which process took a connection, and the board's start that `run` waits
on before its banner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seg_handler.launcher import board, processes
from seg_handler.launcher.settings import isolated_settings
from seg_handler.launcher.sockets import accepting_process
from tests.support import wait_for

pytestmark = pytest.mark.integration


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_wait_listening_reads_only_what_the_new_start_wrote(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("listening on 127.0.0.1:1 (an earlier run)\n")
    since = processes.log_size(log)
    proc = processes.start(
        _python(
            "import time; time.sleep(0.3); print('listening on 127.0.0.1:4242 (2 processes)', flush=True)"
        ),
        log,
    )
    try:
        listening = processes.wait_listening(proc, log, timeout=30, since=since)
    finally:
        processes.stop(proc)
    assert (listening.host, listening.port) == ("127.0.0.1", 4242)
    assert listening.line.endswith("listening on 127.0.0.1:4242 (2 processes)")


def test_wait_listening_fails_with_the_log_when_the_server_exits_first(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    proc = processes.start(_python("import sys; print('cannot bind', flush=True); sys.exit(3)"), log)
    with pytest.raises(processes.StartError, match=r"exited with 3 before it listened:\ncannot bind"):
        processes.wait_listening(proc, log, timeout=30)


def _group_with_a_child(tmp_path: Path, leader_exits: bool) -> tuple[subprocess.Popen[bytes], int]:
    """A leader that starts a long-lived child in its group (and exits at once, or sleeps too); both pids."""
    pid_file = tmp_path / "child.pid"
    code = f"""
        import pathlib, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))
        time.sleep(0 if {leader_exits} else 60)
    """
    proc = processes.start(_python(code), tmp_path / "group.log")
    wait_for("the child's pid", pid_file.read_text, timeout=30)
    return proc, int(pid_file.read_text())


def test_stop_takes_the_whole_process_group(tmp_path: Path) -> None:
    proc, child = _group_with_a_child(tmp_path, leader_exits=False)
    processes.stop(proc, timeout=10)
    assert proc.returncode == -signal.SIGTERM
    wait_for("the child gone", lambda: not processes.is_running(child), timeout=10)


def test_stop_signals_nothing_once_the_leader_is_reaped(tmp_path: Path) -> None:
    """A reaped leader's pid may already lead someone else's group: the survivors are left alone."""
    proc, child = _group_with_a_child(tmp_path, leader_exits=True)
    try:
        assert proc.wait(timeout=30) == 0
        processes.stop(proc, timeout=1)
        assert processes.is_running(child)
    finally:
        os.kill(child, signal.SIGKILL)


def test_accepting_process_names_the_process_that_took_each_connection(tmp_path: Path) -> None:
    port = processes.free_port()
    server = f"""
        import socket
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", {port}))
        sock.listen()
        print("listening on 127.0.0.1:{port}", flush=True)
        held = []
        while True:
            held.append(sock.accept()[0])
    """
    servers = [processes.start(_python(server), tmp_path / f"server-{i}.log") for i in range(2)]
    pids = {proc.pid for proc in servers}
    try:
        for i, proc in enumerate(servers):
            processes.wait_listening(proc, tmp_path / f"server-{i}.log", timeout=30)
        seen: set[int] = set()
        for _ in range(200):
            if seen == pids:
                break
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                found: list[int | None] = [None]

                def accepted(found: list[int | None] = found) -> bool:
                    found[0] = accepting_process(port, pids)
                    return found[0] is not None

                wait_for("a server to accept", accepted, timeout=10, interval=0.01)
                assert found[0] in pids
                seen.add(int(found[0] or 0))
        assert seen == pids, "the kernel spread 200 connections over both processes"
    finally:
        for proc in servers:
            processes.stop(proc)


@pytest.mark.parametrize("board_processes", [1, 2])
def test_board_start_returns_once_every_board_process_answers_serving(
    board_processes: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `run` waits for before its banner, with one process and with the supervisor's two (no TorchServe:
    the board serves without it and tags later)."""
    monkeypatch.setenv("BOARD_PROCESSES", str(board_processes))
    monkeypatch.setenv("BOARD_DATABASE_URL", f"sqlite:///{tmp_path / 'board.db'}")
    monkeypatch.setenv("BOARD_AUDIT_LOG", str(tmp_path / "audit.log"))
    settings = replace(
        isolated_settings(tmp_path / "store", tmp_path / "runtime", ready_timeout_s=120),
        board_address=f"127.0.0.1:{processes.free_port()}",
        board_metrics_address="none",
    )
    started = board.start(settings)
    assert started is not None, "board-server is installed in this environment"
    try:
        assert started.address == settings.board_address
        log = settings.board_log_file.read_text()
        assert ("processes, pids" in log) == (board_processes > 1)
        # Every process said SERVING before start returned, so fresh connections are answered at once.
        port = int(started.address.rsplit(":", 1)[1])
        members = {started.proc.pid, *processes.group_members(started.proc.pid)}
        for _ in range(4):
            with grpc.insecure_channel(
                started.address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as ch:
                request = health_pb2.HealthCheckRequest(service=board.SERVICE)
                answer = health_pb2_grpc.HealthStub(ch).Check(request, timeout=5, wait_for_ready=False)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
                assert accepting_process(port, members) is not None
    finally:
        processes.stop(started.proc)


def test_free_port_is_outside_the_kernels_ephemeral_range_and_free() -> None:
    """The kernel hands out ephemeral ports to every port-0 server and outgoing connection of the suite's
    other workers; a port picked there could be taken before TorchServe binds it (seen in CI)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {processes.free_port() for _ in range(20)}
    assert len(ports) > 1, "picked at random"
    for port in ports:
        assert processes.PICKED_PORTS_FROM <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
