"""How the gRPC adapter reads requests so that the limits per client (api/limits.py) hold before a body has
arrived: a request's messages are read with ``read_within`` / ``messages_within`` (``context.read()``), and a
request that has not arrived within the request timeout raises RequestTimedOut (DEADLINE_EXCEEDED).

The request timeout is kept by ``Arrivals``, one per server: a call waiting for its request is one entry in
a dict, and one sweep a second (every ``timeout / 4`` when that is shorter) ends those past their time,
instead of an event-loop timer armed and cancelled on every call (docs/operations.md, "How this was
chosen"). A stalled request ends between the timeout and one sweep later.

Health and reflection get the peer limit and the request timeout alone (``limit_other``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
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


class Arrivals:
    """The request timeout of one server's calls (see the module docstring): ``read(context)`` is
    ``context.read()`` that raises RequestTimedOut when the message takes longer than ``timeout_s``. Runs on
    the server's event loop; ``close`` stops its sweep."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._period_s = min(1.0, timeout_s / 4)
        # The calls waiting, by task, with when they began (in the order they began: the sweep stops at the
        # first that still has time), and those the sweep has cancelled.
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def read(self, context: Context) -> Any:
        """The call's next request message, or EOF after the last (``context.read()``)."""
        task = asyncio.current_task()
        assert task is not None  # grpc.aio runs every handler in a task
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="board-request-timeout")
        waiting = self._waiting
        waiting[task] = time.monotonic()
        try:
            return await context.read()
        except asyncio.CancelledError:
            # As asyncio.timeout does: our cancellation becomes the timeout, anyone else's stays a cancel.
            if waiting.pop(task, None) is None and task in self._expired:
                self._expired.discard(task)
                if task.uncancel() == 0:
                    raise RequestTimedOut(self.timeout_s) from None
            raise
        finally:
            if waiting.pop(task, None) is None and task in self._expired:  # the message won the race
                self._expired.discard(task)
                task.uncancel()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._period_s)
            late = time.monotonic() - self.timeout_s
            for task, since in list(self._waiting.items()):
                if since > late:
                    break
                del self._waiting[task]
                self._expired.add(task)
                task.cancel()

    def close(self) -> None:
        """Stop the sweep (the server has stopped)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


async def read_within(context: Context, arrivals: Arrivals) -> Any:
    """The call's next request message (``context.read()``, no iterator to finalise), or None after the
    last; RequestTimedOut when it does not arrive within the request timeout."""
    message = await arrivals.read(context)
    return None if message is EOF else message


async def messages_within(context: Context, arrivals: Arrivals, *, every: bool) -> AsyncIterator[Any]:
    """The call's request messages; the first (``every``: each one) must arrive within the request timeout
    of the one before (of the call's start for the first), else RequestTimedOut."""
    first = True
    while True:
        if first or every:
            message = await read_within(context, arrivals)
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


async def _one(arrivals: Arrivals, context: Context) -> Any:
    request = await read_within(context, arrivals)
    if request is None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended before its request message")
    return request


def limit_other(
    handler: grpc.RpcMethodHandler[Any, Any], limits: ClientLimits, arrivals: Arrivals
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
                return await unary(await _one(arrivals, context), context)

        return grpc.stream_unary_rpc_method_handler(one_answer, deserialize, serialize)
    if handler.unary_stream is not None:

        async def one_request(context: Context) -> Any:
            return await _one(arrivals, context)

        answers = _streamed(handler.unary_stream, one_request, limits)
        return grpc.stream_stream_rpc_method_handler(answers, deserialize, serialize)
    if handler.stream_unary is not None:
        collect = cast_awaitable(handler.stream_unary)

        async def collected(requests: AsyncIterator[Any], context: Context) -> Any:
            async with _limited(context, limits):
                return await collect(messages_within(context, arrivals, every=True), context)

        return grpc.stream_unary_rpc_method_handler(collected, deserialize, serialize)

    async def the_requests(context: Context) -> Any:
        return messages_within(context, arrivals, every=False)

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
