"""Which process holds the other end of a loopback TCP connection, read from /proc.

Several board processes accept on one port (SO_REUSEPORT) and the kernel picks which one takes a connection;
this is how `run` knows which of them answered its health check.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ESTABLISHED = "01"  # the state column of /proc/net/tcp


@dataclass(frozen=True)
class _Socket:
    local_port: int
    remote_port: int
    state: str
    inode: int


def _tcp_sockets() -> list[_Socket]:
    """Every TCP socket of this network namespace (IPv4 and IPv6)."""
    found = []
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) >= 10:
                local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
                found.append(_Socket(int(local, 16), int(remote, 16), fields[3], int(fields[9])))
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets ``pid`` has open (none when it is gone or not ours to read)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def accepting_process(port: int, candidates: Iterable[int]) -> int | None:
    """Which of ``candidates`` holds the server end of this process's open connection to local ``port``
    (None when none does, e.g. the connection is already closed)."""
    sockets = _tcp_sockets()
    mine = socket_inodes(os.getpid())
    client_ports = {
        s.local_port for s in sockets if s.inode in mine and s.remote_port == port and s.state == ESTABLISHED
    }
    server_ends = {
        s.inode
        for s in sockets
        if s.local_port == port and s.remote_port in client_ports and s.state == ESTABLISHED
    }
    for pid in candidates:
        if socket_inodes(pid) & server_ends:
            return pid
    return None
