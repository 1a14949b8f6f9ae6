"""The gRPC face of the board's call concerns (api/calls.py): one interceptor that reads the caller's
``authorization`` metadata, applies the CallGuard and sends its statuses as gRPC aborts.

For every board.v1 method, once per method (the wrapped handler is cached):

- requests that protobuf cannot decode (invalid UTF-8 in a string field, truncated bytes) are answered
  INVALID_ARGUMENT instead of the INTERNAL that gRPC would give;
- who is calling, the deadline, errors → status and the observers come from the CallGuard, the same as on
  the HTTP listener; the server span comes from OpenTelemetry's gRPC instrumentation (runtime/tracing.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from board_server.api.calls import CallGuard, CallObserver, undecodable
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


def peer_address(peer: str) -> str:
    """The client's address in gRPC's peer string, without the port: ``ipv4:127.0.0.2:5123`` → ``127.0.0.2``,
    ``ipv6:[::1]:5123`` → ``::1``; any other kind (``unix:…``) as it is."""
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        return (rest.rpartition(":")[0] or rest).strip("[]")
    return peer or ""


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
    """See the module docstring. Only methods of ``service`` are wrapped; health and reflection pass."""

    def __init__(
        self,
        service: str,
        accounts: Accounts,
        *,
        call_timeout_s: float,
        observers: Sequence[CallObserver] = (),
    ) -> None:
        self._prefix = f"/{service}/"
        self._guard = CallGuard(service, accounts, call_timeout_s=call_timeout_s, observers=observers)
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

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
        if handler is None or not method.startswith(self._prefix):
            return handler
        wrapped = self._wrap(method[len(self._prefix) :], handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, name: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        deserialize = _safe(handler.request_deserializer)
        if handler.unary_unary is not None:
            unary = handler.unary_unary
            return grpc.unary_unary_rpc_method_handler(
                self._unary(name, unary),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)
            return grpc.unary_stream_rpc_method_handler(
                self._stream(name, stream),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streaming: UploadAttachment brings its own handling

    async def _enter(self, name: str, request: Any, context: Context) -> None:
        """Checks before the servicer runs: the request decoded, the caller authenticated."""
        if isinstance(request, _Undecodable):
            raise undecodable(self._guard.service, name, request.reason)
        await self._guard.admit(name, _authorization(context), peer_address(context.peer()))

    def _unary(self, name: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        guard = self._guard

        async def guarded(request: Any, context: Context) -> Any:
            outcome = guard.outcome(name, PROTOCOL, _aborter(context), _aborted_below(context))
            async with outcome, guard.deadline(context.time_remaining()):
                await self._enter(name, request, context)
                return await behaviour(request, context)

        return guarded

    def _stream(
        self, name: str, behaviour: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        guard = self._guard

        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            async with guard.outcome(name, PROTOCOL, _aborter(context), _aborted_below(context)):
                await self._enter(name, request, context)
                async for item in behaviour(request, context):
                    yield item

        return guarded
