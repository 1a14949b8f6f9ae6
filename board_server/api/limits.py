"""Limits per client of the gRPC transport: who the peer is, how many calls each peer and each signed-in user
has in progress in this process, and how long a request may take to arrive.

- The peer is the connection's source address; when that address is a trusted proxy (``--trusted-proxies``),
  it is the right-most address of ``x-forwarded-for`` that is not a trusted proxy (what the last trusted hop
  saw), so that a client behind the proxy cannot pick its own identity by sending the header itself.
- IPv6 peers are counted per /64: one host usually holds a whole /64, and counting single addresses would
  give it 2^64 shares.
- A request's messages are read with ``read_within`` / ``messages_within`` (``context.read()``): a request
  that has not arrived within the request timeout raises RequestTimedOut (answered DEADLINE_EXCEEDED).
- Health and reflection get the peer limit and the request timeout alone (``limit_other``).
- Counts live in the process (no lock: every call runs on its event loop); with ``--processes N`` a peer
  spread over N processes gets N shares.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import grpc

from board_server.api.status import to_grpc_status
from board_server.core.errors import ResourceExhausted

FORWARDED_FOR = "x-forwarded-for"
UNKNOWN_PEER = "unknown"
# When a refused client may try again: a call in progress usually ends well within a second.
RETRY_AFTER_S = 1.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class CallLimits:
    """What the interceptor enforces per client (from runtime/config.py's settings)."""

    max_calls_per_peer: int
    request_timeout_s: float
    upload_timeout_s: float
    trusted_proxies: tuple[str, ...] = ()
    # Off only to measure what the limits cost: unary requests are then read by gRPC before the board's code
    # runs, no call is counted, and only an upload's messages keep their timeout.
    enabled: bool = True


def address_of(peer: str) -> str:
    """The address in grpc's peer string: ``ipv4:127.0.0.2:5555`` → ``127.0.0.2``, ``ipv6:[::1]:5`` →
    ``::1``; a Unix socket keeps its whole name; an empty peer (a call already gone) is ``unknown``."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer or UNKNOWN_PEER


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
    """Names the peer of a call from its connection and, behind a trusted proxy, its ``x-forwarded-for``."""

    def __init__(self, trusted_proxies: Sequence[str] = ()) -> None:
        self._trusted: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in trusted_proxies
        )

    def _is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self._trusted)

    def identify(self, peer: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """The client's address (see the module docstring)."""
        direct = address_of(peer)
        if not self._trusted:
            return direct
        parsed = _parsed(direct)
        if parsed is None or not self._is_trusted(parsed):
            return direct
        hops = [
            hop
            for key, value in metadata or ()
            if key == FORWARDED_FOR and isinstance(value, str)
            for hop in value.split(",")
        ]
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
    return f"peer:{address}"


class CallsInProgress:
    """Calls in progress per key (a peer, a user), at most ``limit`` for each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def count(self, key: str) -> int:
        return self._counts.get(key, 0)

    def enter(self, key: str, whose: str) -> None:
        """Count one more call under ``key``; raise ResourceExhausted (with RetryInfo and a QuotaFailure on
        ``key``) when ``limit`` are already in progress. ``whose`` names the key for people. Every ``enter``
        that returns is matched by one ``leave``."""
        held = self._counts.get(key, 0)
        if held >= self.limit:
            raise ResourceExhausted(
                f"{self.limit} calls are already in progress from {whose}, the most allowed; retry when one "
                "has ended",
                RETRY_AFTER_S,
                subject=key,
            )
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


# --- requests that take their time -------------------------------------------------------------------------

Context = grpc.aio.ServicerContext[Any, Any]
# What ``context.read()`` returns after the last request message (grpc's stubs do not declare it).
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class RequestTimedOut(Exception):  # noqa: N818 - an event of the transport, like TimeoutError
    """A request (or an upload's next message) did not arrive within the request timeout."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the request did not arrive within {timeout_s:g} s; the call is ended")


async def read_within(context: Context, timeout_s: float) -> Any:
    """The call's next request message (``context.read()``, no iterator to finalise), or None after the
    last; RequestTimedOut when it does not arrive within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            message = await context.read()
    except TimeoutError:
        raise RequestTimedOut(timeout_s) from None
    return None if message is EOF else message


async def messages_within(context: Context, timeout_s: float, *, every: bool) -> AsyncIterator[Any]:
    """The call's request messages; the first (``every``: each one) must arrive within ``timeout_s`` of the
    one before (of the call's start for the first), else RequestTimedOut."""
    first = True
    while True:
        if first or every:
            message = await read_within(context, timeout_s)
        else:
            message = await context.read()
            message = None if message is EOF else message
        if message is None:
            return
        first = False
        yield message


# --- health and reflection: the peer limit and the request timeout alone ----------------------------------


@asynccontextmanager
async def _limited(context: Context, peers: PeerIdentity, calls: CallsInProgress) -> AsyncIterator[None]:
    peer = peers.identify(context.peer(), context.invocation_metadata())
    try:
        with calls.held(peer_key(peer), "this address"):
            yield
    except ResourceExhausted as exc:
        status = to_grpc_status(exc)
        await context.abort(status.code, status.details, status.trailing_metadata)
    except RequestTimedOut as exc:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))


async def _one(timeout_s: float, context: Context) -> Any:
    request = await read_within(context, timeout_s)
    if request is None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended before its request message")
    return request


def limit_other(
    handler: grpc.RpcMethodHandler[Any, Any], peers: PeerIdentity, calls: CallsInProgress, timeout_s: float
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` (of a service other than the board's) taking its request as a stream, counted against
    its peer and ended when its request (its first message, for a client stream) does not arrive in time.
    A handler that is not a coroutine is returned as it is."""
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    behaviour: Callable[..., Any] | None = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    if not (inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
        return handler
    if handler.unary_unary is not None:
        unary = cast_awaitable(handler.unary_unary)

        async def one_answer(requests: AsyncIterator[Any], context: Context) -> Any:
            async with _limited(context, peers, calls):
                return await unary(await _one(timeout_s, context), context)

        return grpc.stream_unary_rpc_method_handler(one_answer, deserialize, serialize)
    if handler.unary_stream is not None:

        async def one_request(context: Context) -> Any:
            return await _one(timeout_s, context)

        answers = _streamed(handler.unary_stream, one_request, peers, calls)
        return grpc.stream_stream_rpc_method_handler(answers, deserialize, serialize)
    if handler.stream_unary is not None:
        collect = cast_awaitable(handler.stream_unary)

        async def collected(requests: AsyncIterator[Any], context: Context) -> Any:
            async with _limited(context, peers, calls):
                return await collect(messages_within(context, timeout_s, every=True), context)

        return grpc.stream_unary_rpc_method_handler(collected, deserialize, serialize)

    async def the_requests(context: Context) -> Any:
        return messages_within(context, timeout_s, every=False)

    conversation = _streamed(handler.stream_stream, the_requests, peers, calls)
    return grpc.stream_stream_rpc_method_handler(conversation, deserialize, serialize)


def _streamed(
    behaviour: Any,
    first_argument: Callable[[Context], Awaitable[Any]],
    peers: PeerIdentity,
    calls: CallsInProgress,
) -> Callable[..., Any]:
    """A streaming-response ``behaviour`` under the peer limit, called with ``first_argument(context)``: an
    async generator yields its answers through, a coroutine (answering with ``context.write``) is awaited."""
    if inspect.isasyncgenfunction(behaviour):
        stream = cast_stream(behaviour)

        async def answers(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async with _limited(context, peers, calls):
                async for item in stream(await first_argument(context), context):
                    yield item

        return answers
    write = cast_awaitable(behaviour)

    async def written(requests: AsyncIterator[Any], context: Context) -> None:
        async with _limited(context, peers, calls):
            await write(await first_argument(context), context)

    return written


def cast_awaitable(behaviour: Any) -> Callable[..., Awaitable[Any]]:
    return cast(Callable[..., Awaitable[Any]], behaviour)


def cast_stream(behaviour: Any) -> Callable[..., AsyncIterator[Any]]:
    return cast(Callable[..., AsyncIterator[Any]], behaviour)
