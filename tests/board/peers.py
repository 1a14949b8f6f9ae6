"""Calls from another client address: a small TCP forwarder whose connections to the server leave from a
chosen loopback address (127.0.0.2, 127.0.0.3, ...), so that any gRPC client, ``BoardClient`` included,
reaches the server as that peer. The attackers of the limit tests call through one; the legitimate client
calls the server directly, from 127.0.0.1.

    with from_address(server.target, "127.0.0.2") as target, BoardClient(target) as stranger:
        stranger.sign_in(...)        # the server sees 127.0.0.2
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator


class Forwarder:
    """Listens on 127.0.0.1 (port 0) and copies every connection, both ways, to ``target`` over a connection
    bound to ``source``. Threads: one accepting, two per connection; ``close`` stops them all."""

    def __init__(self, target: str, source: str) -> None:
        host, port = target.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._source = source
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._start(self._accept)

    def _start(self, run: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=run, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self._upstream, source_address=(self._source, 0))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            self._start(self._pump, client, server)
            self._start(self._pump, server, client)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
            threads = list(self._threads)
        # Closing alone does not wake a thread blocked in accept() on Linux (each close waited out the join's
        # 5 s); shutting the listener down does.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(timeout=5)


@contextlib.contextmanager
def from_address(target: str, source: str) -> Iterator[str]:
    """A target that reaches ``target`` from the loopback address ``source``; closed on exit."""
    forwarder = Forwarder(target, source)
    try:
        yield forwarder.target
    finally:
        forwarder.close()
