"""How the gRPC adapter reads requests so that the limits per client (api/limits.py) hold before a body has
arrived: a request's messages are read with ``read_within`` / ``messages_within`` (``context.read()``), and a
request that has not arrived within the request timeout raises RequestTimedOut (DEADLINE_EXCEEDED).

Health and reflection get the peer limit and the request timeout alone (``limit_other``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import grpc
from grpc_status import rpc_status

from board_server.api.limits import FORWARDED_FOR, ClientLimits, RequestTimedOut
from board_server.api.status import rich_status
from board_server.core.errors import ResourceExhausted


def peer_address(peer: str) -> str:
    """The client's address in gRPC's peer string, without the port: ``ipv4:127.0.0.2:5123`` → ``127.0.0.2``,
    ``ipv6:[::1]:5123`` → ``::1``; any other kind (``unix:…``) as it is."""
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        return (rest.rpartition(":")[0] or rest).strip("[]")
    return peer or ""


def forwarded_for(context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
    """The values of the call's ``x-forwarded-for`` metadata."""
    return [v for k, v in context.invocation_metadata() or () if k == FORWARDED_FOR and isinstance(v, str)]


Context = grpc.aio.ServicerContext[Any, Any]
# What ``context.read()`` returns after the last request message (grpc's stubs do not declare it).
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


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
async def _limited(context: Context, limits: ClientLimits) -> AsyncIterator[None]:
    try:
        key = limits.enter_peer(limits.peer(peer_address(context.peer()), forwarded_for(context)))
        try:
            yield
        finally:
            limits.leave(key)
    except ResourceExhausted as exc:
        sent = rpc_status.to_status(rich_status(exc))
        await context.abort(sent.code, sent.details, sent.trailing_metadata)
    except RequestTimedOut as exc:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))


async def _one(timeout_s: float, context: Context) -> Any:
    request = await read_within(context, timeout_s)
    if request is None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended before its request message")
    return request


def limit_other(
    handler: grpc.RpcMethodHandler[Any, Any], limits: ClientLimits, timeout_s: float
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
            async with _limited(context, limits):
                return await unary(await _one(timeout_s, context), context)

        return grpc.stream_unary_rpc_method_handler(one_answer, deserialize, serialize)
    if handler.unary_stream is not None:

        async def one_request(context: Context) -> Any:
            return await _one(timeout_s, context)

        answers = _streamed(handler.unary_stream, one_request, limits)
        return grpc.stream_stream_rpc_method_handler(answers, deserialize, serialize)
    if handler.stream_unary is not None:
        collect = cast_awaitable(handler.stream_unary)

        async def collected(requests: AsyncIterator[Any], context: Context) -> Any:
            async with _limited(context, limits):
                return await collect(messages_within(context, timeout_s, every=True), context)

        return grpc.stream_unary_rpc_method_handler(collected, deserialize, serialize)

    async def the_requests(context: Context) -> Any:
        return messages_within(context, timeout_s, every=False)

    conversation = _streamed(handler.stream_stream, the_requests, limits)
    return grpc.stream_stream_rpc_method_handler(conversation, deserialize, serialize)


def _streamed(
    behaviour: Any,
    first_argument: Callable[[Context], Awaitable[Any]],
    limits: ClientLimits,
) -> Callable[..., Any]:
    """A streaming-response ``behaviour`` under the peer limit, called with ``first_argument(context)``: an
    async generator yields its answers through, a coroutine (answering with ``context.write``) is awaited."""
    if inspect.isasyncgenfunction(behaviour):
        stream = cast_stream(behaviour)

        async def answers(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async with _limited(context, limits):
                async for item in stream(await first_argument(context), context):
                    yield item

        return answers
    write = cast_awaitable(behaviour)

    async def written(requests: AsyncIterator[Any], context: Context) -> None:
        async with _limited(context, limits):
            await write(await first_argument(context), context)

    return written


def cast_awaitable(behaviour: Any) -> Callable[..., Awaitable[Any]]:
    return cast(Callable[..., Awaitable[Any]], behaviour)


def cast_stream(behaviour: Any) -> Callable[..., AsyncIterator[Any]]:
    return cast(Callable[..., AsyncIterator[Any]], behaviour)
