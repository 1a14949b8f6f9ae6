"""The gRPC face of the board's call concerns (api/calls.py): one interceptor that reads the caller's
``authorization`` metadata, applies the CallGuard and sends its statuses as gRPC aborts.

For every board.v1 method, once per method (the wrapped handler is cached):

- every method takes its request as a stream (a unary request is a one-message stream on the wire, so
  clients see no difference): the handler runs when the headers arrive, before any message, so that the
  peer's calls in progress are counted from that moment (api/limits.py, through the CallGuard) and a
  request that has not arrived within ``request_timeout_s`` ends the call (DEADLINE_EXCEEDED, kept by
  api/grpc_requests.py's ``Arrivals``). A request of at most ``--max-message-bytes`` is read first, then
  its caller is authenticated and counted against its user: authenticating first, then asking gRPC for
  the message, cost 7.5 % of GetPost c16, reading first 0.8 % (docs/operations.md). An upload's
  caller is authenticated before a byte of its body is read; its every message must arrive within the
  request timeout, and the whole upload within ``upload_timeout_s``. Health and reflection get the peer
  limit and the request timeout alone;
- requests that protobuf cannot decode (invalid UTF-8 in a string field, truncated bytes) are answered
  INVALID_ARGUMENT instead of the INTERNAL that gRPC would give;
- who is calling, the deadline, errors → status and the observers come from the CallGuard, the same as on
  the HTTP listener; the server span comes from OpenTelemetry's gRPC instrumentation (runtime/tracing.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from board_server.api.calls import CallGuard, CallObserver, undecodable
from board_server.api.grpc_requests import (
    EOF,
    Arrivals,
    forwarded_for,
    limit_other,
    messages_within,
    peer_address,
    read_within,
)
from board_server.api.limits import ClientLimits
from board_server.core.errors import FieldViolation, InvalidArgument
from board_server.domain.accounts import Accounts

Context = grpc.aio.ServicerContext[Any, Any]
PROTOCOL = "grpc"


class _Undecodable:
    """What the safe deserializer returns for bytes that are not the request message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data) if deserializer is not None else data
        except (DecodeError, ValueError, TypeError, RecursionError) as exc:
            text = str(exc).lower()
            reason = "a string field holds invalid UTF-8" if "utf-8" in text else "the bytes do not parse"
            return _Undecodable(reason)

    return deserialize


if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # grpc's runtime class is not generic; only its stubs are.
    _ServerInterceptor = grpc.aio.ServerInterceptor


def _aborter(context: Context) -> Callable[[status_pb2.Status], Awaitable[NoReturn]]:
    async def abort(status: status_pb2.Status) -> NoReturn:
        sent = rpc_status.to_status(status)
        await context.abort(sent.code, sent.details, sent.trailing_metadata)
        raise AssertionError("context.abort returned")  # it raises AbortError

    return abort


def _aborted_below(context: Context) -> Callable[[Exception], grpc.StatusCode | None]:
    def code(exc: Exception) -> grpc.StatusCode | None:
        if isinstance(exc, grpc.aio.AbortError):
            return context.code() or grpc.StatusCode.UNKNOWN
        return None

    return code


def _authorization(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else ""
    return None


class BoardInterceptor(_ServerInterceptor):
    """See the module docstring. board.v1 gets all of it; health and reflection the peer limit alone."""

    def __init__(
        self,
        service: str,
        accounts: Accounts,
        *,
        call_timeout_s: float,
        limits: ClientLimits,
        observers: Sequence[CallObserver] = (),
    ) -> None:
        self._prefix = f"/{service}/"
        self._limits = limits
        self._guard = CallGuard(
            service, accounts, call_timeout_s=call_timeout_s, observers=observers, limits=limits
        )
        self._arrivals = Arrivals(limits.limits.request_timeout_s)
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def close(self) -> None:
        """The server has stopped: stop the request timeout's sweep."""
        self._arrivals.close()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if method.startswith(self._prefix):
            wrapped = self._wrap(method[len(self._prefix) :], handler)
        elif self._limits.enabled:
            wrapped = limit_other(handler, self._limits, self._arrivals)
        else:
            wrapped = handler
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, name: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        deserialize = _safe(handler.request_deserializer)
        serialize = handler.response_serializer
        limited = self._limits.enabled
        if handler.unary_unary is not None:
            if not limited:
                read = self._unary_as_read(name, handler.unary_unary)
                return grpc.unary_unary_rpc_method_handler(read, deserialize, serialize)
            unary = self._unary(name, handler.unary_unary)
            return grpc.stream_unary_rpc_method_handler(unary, deserialize, serialize)
        if handler.unary_stream is not None:
            answers = cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)
            if not limited:
                as_read = self._stream_as_read(name, answers)
                return grpc.unary_stream_rpc_method_handler(as_read, deserialize, serialize)
            stream = self._stream(name, answers)
            return grpc.stream_stream_rpc_method_handler(stream, deserialize, serialize)
        if handler.stream_unary is not None:
            upload = self._upload(name, handler.stream_unary)
            return grpc.stream_unary_rpc_method_handler(upload, deserialize, serialize)
        return handler  # board.v1 has no bidirectional methods

    # --- before the servicer runs ------------------------------------------------------------------------

    def _admitted(self, name: str, context: Context) -> Any:
        """The CallGuard's admission from the call's headers alone (counted, authenticated)."""
        peer = peer_address(context.peer())
        return self._guard.admitted(name, _authorization(context), peer, forwarded_for(context))

    def _peer_counted(self, context: Context) -> AbstractContextManager[str]:
        """The CallGuard's peer count from the call's connection alone (the first half of ``_admitted``)."""
        return self._guard.peer_counted(peer_address(context.peer()), forwarded_for(context))

    def _decoded_request(self, name: str, request: Any) -> Any:
        if request is None or request is EOF:
            raise InvalidArgument([FieldViolation("request", "the call ended before its request message")])
        if isinstance(request, _Undecodable):
            raise undecodable(self._guard.service, name, request.reason)
        return request

    async def _decoded(self, name: str, messages: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for message in messages:
            yield self._decoded_request(name, message)

    def _outcome(self, name: str, context: Context, timeout_s: float | None = None) -> Any:
        return self._guard.outcome(name, PROTOCOL, _aborter(context), _aborted_below(context), timeout_s)

    # --- the three kinds of board.v1 method ----------------------------------------------------------------

    def _unary(self, name: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        guard, arrivals = self._guard, self._arrivals

        async def guarded(requests: AsyncIterator[Any], context: Context) -> Any:
            # The call's deadline runs from its start, the request's wait included (as with the limits off).
            async with self._outcome(name, context), guard.deadline(context.time_remaining()):
                with self._peer_counted(context) as peer:
                    request = await arrivals.read(context)
                    async with guard.caller_admitted(name, _authorization(context), peer):
                        return await behaviour(self._decoded_request(name, request), context)

        return guarded

    def _stream(
        self, name: str, behaviour: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        guard, arrivals = self._guard, self._arrivals

        async def guarded(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async with self._outcome(name, context):
                with self._peer_counted(context) as peer:
                    request = self._decoded_request(name, await read_within(context, arrivals))
                    async with guard.caller_admitted(name, _authorization(context), peer):
                        async for item in behaviour(request, context):
                            yield item

        return guarded

    def _upload(self, name: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        limits, arrivals = self._limits.limits, self._arrivals

        async def guarded(requests: AsyncIterator[Any], context: Context) -> Any:
            timeout = limits.upload_timeout_s
            async with (
                self._outcome(name, context, timeout),
                asyncio.timeout(timeout),
                self._admitted(name, context),
            ):
                messages = messages_within(context, arrivals, every=True)
                return await behaviour(self._decoded(name, messages), context)

        return guarded

    # --- with the per-client limits off (measuring their cost): gRPC reads a unary request first ------------

    def _unary_as_read(
        self, name: str, behaviour: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        guard = self._guard

        async def guarded(request: Any, context: Context) -> Any:
            async with (
                self._outcome(name, context),
                guard.deadline(context.time_remaining()),
                self._admitted(name, context),
            ):
                return await behaviour(self._decoded_request(name, request), context)

        return guarded

    def _stream_as_read(
        self, name: str, behaviour: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            async with self._outcome(name, context), self._admitted(name, context):
                async for item in behaviour(self._decoded_request(name, request), context):
                    yield item

        return guarded
