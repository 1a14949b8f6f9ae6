"""Limits per client, shared by every transport of a process: who the peer is, and how many calls each peer
and each signed-in user has in progress. One ``ClientLimits`` per process is handed to both the gRPC
interceptor and the HTTP listener's CallGuard, so that a browser's Connect calls and a gRPC client's calls
from the same address draw on the same budget.

- The peer is the connection's source address; when that address is a trusted proxy (``--trusted-proxies``),
  it is the right-most address of ``x-forwarded-for`` that is not a trusted proxy (what the last trusted hop
  saw), so that a client behind the proxy cannot pick its own identity by sending the header itself.
- IPv6 peers are counted per /64: one host usually holds a whole /64, and counting single addresses would
  give it 2^64 shares.
- Counts live in the process (no lock: every call runs on its event loop); with ``--processes N`` a peer
  spread over N processes gets N shares.

How a transport reads a request within ``request_timeout_s`` is its own business (the gRPC adapter reads
its requests as streams; the HTTP listener's server reads bodies before a handler runs).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from board_server.core.errors import QuotaExceeded, QuotaViolation

FORWARDED_FOR = "x-forwarded-for"
UNKNOWN_PEER = "unknown"
# When a refused client may try again: a call in progress usually ends well within a second.
RETRY_AFTER_S = 1.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class LimitSettings(Protocol):
    """What the limits read of the settings (runtime/config.py's Settings has all of it)."""

    @property
    def max_calls_per_peer(self) -> int: ...
    @property
    def request_timeout_s(self) -> float: ...
    @property
    def upload_timeout_s(self) -> float: ...
    @property
    def trusted_proxies(self) -> tuple[str, ...]: ...
    @property
    def client_limits(self) -> bool: ...


@dataclass(frozen=True)
class CallLimits:
    """The per-client limits of a process (from runtime/config.py's settings)."""

    max_calls_per_peer: int
    request_timeout_s: float
    upload_timeout_s: float
    trusted_proxies: tuple[str, ...] = ()
    # Off only to measure what the limits cost: no call is counted, and the gRPC adapter lets gRPC read a
    # unary request before the board's code runs (an upload's messages keep their timeout).
    enabled: bool = True

    @classmethod
    def of(cls, settings: LimitSettings) -> CallLimits:
        return cls(
            max_calls_per_peer=settings.max_calls_per_peer,
            request_timeout_s=settings.request_timeout_s,
            upload_timeout_s=settings.upload_timeout_s,
            trusted_proxies=settings.trusted_proxies,
            enabled=settings.client_limits,
        )


def _parsed(text: str) -> Address | None:
    name = text.strip()
    if name.startswith("["):  # [2001:db8::1]:443
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:  # 203.0.113.7:443
        name = name.split(":", 1)[0]
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class PeerIdentity:
    """Names the peer of a call from its connection's address and, behind a trusted proxy, the values of
    its ``x-forwarded-for`` headers."""

    def __init__(self, trusted_proxies: Sequence[str] = ()) -> None:
        self._trusted: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in trusted_proxies
        )

    def _is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self._trusted)

    def identify(self, direct: str, forwarded_for: Iterable[str]) -> str:
        """The client's address (see the module docstring); ``direct`` is the connection's."""
        direct = direct or UNKNOWN_PEER
        if not self._trusted:
            return direct
        parsed = _parsed(direct)
        if parsed is None or not self._is_trusted(parsed):
            return direct
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            address = _parsed(hop)
            if address is None:
                return direct  # not an address: only the proxy's own connection can be vouched for
            if not self._is_trusted(address):
                return str(address)
        first = _parsed(hops[0]) if hops else None
        return str(first) if first is not None else direct  # every hop a trusted proxy: the first one


@lru_cache(maxsize=4096)
def peer_key(address: str) -> str:
    """What a peer is counted under: ``peer:<IPv4 address>``, ``peer:<IPv6 /64>``, ``peer:<other name>``."""
    if ":" in address and not address.startswith("unix"):
        try:
            return f"peer:{ipaddress.ip_network(f'{address}/64', strict=False)}"
        except ValueError:
            pass
    return f"peer:{address or UNKNOWN_PEER}"


class CallsInProgress:
    """Calls in progress per key (a peer, a user), at most ``limit`` for each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def count(self, key: str) -> int:
        return self._counts.get(key, 0)

    def enter(self, key: str, whose: str) -> None:
        """Count one more call under ``key``; raise QuotaExceeded (RESOURCE_EXHAUSTED with RetryInfo and a
        QuotaFailure on ``key``) when ``limit`` are already in progress. ``whose`` names the key for people.
        Every ``enter`` that returns is matched by one ``leave``."""
        held = self._counts.get(key, 0)
        if held >= self.limit:
            message = (
                f"{self.limit} calls are already in progress from {whose}, the most allowed; retry when one "
                "has ended"
            )
            raise QuotaExceeded(message, QuotaViolation(key, message), RETRY_AFTER_S)
        self._counts[key] = held + 1

    def leave(self, key: str) -> None:
        left = self._counts[key] - 1
        if left:
            self._counts[key] = left
        else:
            del self._counts[key]

    @contextmanager
    def held(self, key: str, whose: str) -> Iterator[None]:
        """``enter`` for the duration of the block."""
        self.enter(key, whose)
        try:
            yield
        finally:
            self.leave(key)


class ClientLimits:
    """The per-client limits of one process, shared by its transports: the peer's identity and the calls in
    progress per peer and per user."""

    def __init__(self, limits: CallLimits) -> None:
        self.limits = limits
        self.peers = PeerIdentity(limits.trusted_proxies)
        self.calls = CallsInProgress(limits.max_calls_per_peer)

    @property
    def enabled(self) -> bool:
        return self.limits.enabled

    def peer(self, direct: str, forwarded_for: Iterable[str]) -> str:
        """The client's address (``PeerIdentity.identify``)."""
        return self.peers.identify(direct, forwarded_for)

    def enter_peer(self, peer: str) -> str | None:
        """Count a call of ``peer``; return the key to ``leave`` (None with the limits off)."""
        if not self.limits.enabled:
            return None
        key = peer_key(peer)
        self.calls.enter(key, "this address")
        return key

    def enter_user(self, user_id: int | None) -> str | None:
        """Count a call of a signed-in user; return the key to ``leave`` (None: nothing counted)."""
        if not self.limits.enabled or user_id is None:
            return None
        key = f"user:{user_id}"
        self.calls.enter(key, "this user")
        return key

    def leave(self, key: str | None) -> None:
        if key is not None:
            self.calls.leave(key)


class RequestTimedOut(Exception):  # noqa: N818 - an event of the transport, like TimeoutError
    """A request (or an upload's next message) did not arrive within the request timeout; answered
    DEADLINE_EXCEEDED."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the request did not arrive within {timeout_s:g} s; the call is ended")
