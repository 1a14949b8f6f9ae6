"""Several model servers behind one inference backend: which addresses, which key for each, and which server
takes the next call.

``--segmentation-target`` is one address, a comma list (``10.0.0.5:7070,10.0.0.6:7070``) or
``dns:///name:port`` (every address the name resolves to, resolved again every ``RESOLVE_EVERY_S``: a
headless Service that scales). Each server gets a channel and a client of its own, so that each can be sent
its own key (every TorchServe makes its own) and its calls counted apart; calls go round-robin over the
servers that are not ejected.

Health is checked passively, like Envoy's outlier detection, because neither TorchServe 0.12 nor KServe's
model server answers grpc.health.v1: a server that cannot be reached, has no model ready, or refuses our key
is ejected for a backoff (0.5 s doubling to 30 s) and the same call goes at once to the next server, so a
dead server costs an attachment no attempt. After the backoff the server is tried again by the next call;
its first answer brings it back. When every server is ejected, each is still tried in turn, and the last
failure goes to the worker (which pauses, as with one server).
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

from board_server.core.records import ServedModel, TagResult
from clients.segment import SegmentAuthError, SegmentError, SegmentUnavailableError

logger = logging.getLogger(__name__)

DNS_SCHEME = "dns:///"
RESOLVE_EVERY_S = 30.0
EJECT_BASE_S = 0.5
EJECT_MAX_S = 30.0
T = TypeVar("T")


class TargetClient(Protocol):
    """One model server, spoken to in one protocol. Every method may raise SegmentError's subclasses."""

    def segment(self, image: bytes) -> TagResult: ...

    def describe(self) -> ServedModel: ...

    def close(self) -> None: ...


# A client for one address, sending the key of the given file (None: no key).
Connect = Callable[[str, Path | None], TargetClient]
Resolve = Callable[[str, int], list[str]]


@dataclass(frozen=True)
class TargetList:
    """What ``--segmentation-target`` names: fixed addresses, or a DNS name and port to resolve."""

    addresses: tuple[str, ...] = ()
    dns_name: str | None = None
    dns_port: int = 0

    @property
    def dynamic(self) -> bool:
        return self.dns_name is not None


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_targets(text: str) -> TargetList:
    """The targets in ``text``; raises ValueError naming a malformed one.

    ``HOST:PORT[,HOST:PORT...]`` or ``dns:///HOST:PORT`` (alone: gRPC's form of a name to resolve).
    """
    text = text.strip()
    if text.startswith("dns:"):
        if not text.startswith(DNS_SCHEME):
            raise ValueError(f"use dns:///HOST:PORT (no DNS authority), got {text!r}")
        if "," in text:
            raise ValueError("a dns:/// target stands alone; list addresses without it")
        host, port = _host_port(text[len(DNS_SCHEME) :])
        return TargetList(dns_name=host, dns_port=port)
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ValueError(f"empty address in {text!r}")
    for item in items:
        _host_port(item)
    if len(set(items)) != len(items):
        raise ValueError(f"an address is listed twice in {text!r}")
    return TargetList(addresses=tuple(items))


def check_token_files(targets: TargetList, token_files: Sequence[Path]) -> None:
    """Raise ValueError unless there is no key file, one for every server, or one per listed address."""
    count = len(token_files)
    if count <= 1:
        return
    if targets.dynamic:
        raise ValueError("a dns:/// target takes at most one key file (its servers are not known in advance)")
    if count != len(targets.addresses):
        raise ValueError(
            f"{count} key files for {len(targets.addresses)} targets: give one file for all, or one per "
            "target in the same order"
        )


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every TCP address ``host`` resolves to, as HOST:PORT (IPv6 in brackets), sorted; raises OSError."""
    found = set()
    for family, _type, _proto, _name, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        ip = str(sockaddr[0])
        found.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(found)


class _Server:
    """One address, its client and its ejection state."""

    def __init__(self, address: str, client: TargetClient) -> None:
        self.address = address
        self.client = client
        self.failures = 0  # consecutive target failures
        self.ejected_until = 0.0  # monotonic

    def eligible(self, now: float) -> bool:
        return self.ejected_until <= now


class TargetPool:
    """An InferenceBackend over one or several model servers (see the module docstring)."""

    def __init__(
        self,
        spec: str,
        connect: Connect,
        token_files: Sequence[Path] = (),
        *,
        resolve: Resolve = resolve_addresses,
        resolve_every_s: float = RESOLVE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises ValueError for a malformed ``spec`` or a number of key files that does not fit it."""
        self._spec = spec
        self._targets = parse_targets(spec)
        check_token_files(self._targets, token_files)
        self._connect = connect
        self._token_files = tuple(token_files)
        self._resolve = resolve
        self._resolve_every_s = resolve_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._servers: list[_Server] = []
        self._resolved_at: float | None = None
        if not self._targets.dynamic:
            self._servers = [
                _Server(address, connect(address, self._key_file(i)))
                for i, address in enumerate(self._targets.addresses)
            ]

    @property
    def target(self) -> str:
        return self._spec

    @property
    def addresses(self) -> tuple[str, ...]:
        """The servers calls go to now."""
        with self._lock:
            return tuple(s.address for s in self._servers)

    def segment(self, image: bytes) -> TagResult:
        return self._call(lambda server: replace(server.client.segment(image), server=server.address))

    def describe(self) -> ServedModel:
        return self._call(lambda server: server.client.describe())

    def close(self) -> None:
        with self._lock:
            servers, self._servers = self._servers, []
        for server in servers:
            server.client.close()

    # --- choosing a server ------------------------------------------------------------------------------

    def _key_file(self, index: int) -> Path | None:
        if not self._token_files:
            return None
        return self._token_files[index] if len(self._token_files) > 1 else self._token_files[0]

    def _refresh(self, now: float) -> None:
        """Resolve a dns:/// target again when due: new addresses join, vanished ones are closed."""
        if not self._targets.dynamic or (
            self._resolved_at is not None and now - self._resolved_at < self._resolve_every_s
        ):
            return
        self._resolved_at = now
        name, port = str(self._targets.dns_name), self._targets.dns_port
        try:
            addresses = self._resolve(name, port)
        except OSError as exc:
            logger.warning(
                "cannot resolve %s:%d (%s); keeping %d known servers", name, port, exc, len(self._servers)
            )
            return
        known = {s.address: s for s in self._servers}
        kept = [
            known.pop(a) if a in known else _Server(a, self._connect(a, self._key_file(0))) for a in addresses
        ]
        for gone in known.values():
            gone.client.close()
        if [s.address for s in kept] != [s.address for s in self._servers]:
            logger.info("%s resolves to %s", self._spec, ", ".join(addresses) or "nothing")
        self._servers = kept

    def _order(self) -> list[_Server]:
        """The servers to try for one call: round-robin over those not ejected, or all when all are."""
        with self._lock:
            now = self._clock()
            self._refresh(now)
            if not self._servers:
                return []
            start = next(self._turn) % len(self._servers)
            rotated = self._servers[start:] + self._servers[:start]
            eligible = [s for s in rotated if s.eligible(now)]
            return eligible or sorted(rotated, key=lambda s: s.ejected_until)

    def _call(self, call: Callable[[_Server], T]) -> T:
        servers = self._order()
        if not servers:
            raise SegmentUnavailableError(f"{self._spec} resolves to no server")
        last: SegmentError | None = None
        for server in servers:
            try:
                answer = call(server)
            except SegmentError as exc:
                exc.target = server.address
                if not _server_at_fault(exc):
                    self._answered(server)
                    raise
                self._eject(server, exc)
                last = exc
                continue
            self._answered(server)
            return answer
        assert last is not None
        raise last

    def _answered(self, server: _Server) -> None:
        with self._lock:
            if server.failures:
                logger.info("model server %s answers again", server.address)
            server.failures = 0
            server.ejected_until = 0.0

    def _eject(self, server: _Server, exc: SegmentError) -> None:
        with self._lock:
            server.failures += 1
            pause = min(EJECT_MAX_S, EJECT_BASE_S * 2 ** min(server.failures - 1, 16))
            server.ejected_until = self._clock() + pause
            several = len(self._servers) > 1
        if several:
            logger.warning("model server %s skipped for %.1fs: %s", server.address, pause, exc)


def _server_at_fault(exc: SegmentError) -> bool:
    """A failure that says nothing about the image: the server cannot take calls, or refuses our key."""
    return isinstance(exc, SegmentAuthError) or (isinstance(exc, SegmentUnavailableError) and not exc.reached)
