"""The one interceptor of the board's calls: decoding, who is calling, deadline, errors, and call observers.

For every board.v1 method, once per method (the wrapped handler is cached):

- requests that protobuf cannot decode (invalid UTF-8 in a string field, truncated bytes) are answered
  INVALID_ARGUMENT instead of the INTERNAL that gRPC would give;
- the ``authorization`` metadata is turned into the ``Caller`` that ``current_caller()`` returns to the
  servicer (a bad token is UNAUTHENTICATED here; the service decides what the caller may do), with the
  client's address (``peer_address``), which the limits per address key;
- a unary call gets a server-side deadline (``call_timeout_s``; gRPC ends it at the client's deadline when
  that is sooner): DEADLINE_EXCEEDED rather than a stuck task, and the call's database statement ends with it;
- domain errors become their status (errors.py's table, with details); anything else is logged with its
  traceback and answered INTERNAL "internal error" without detail;
- observers (metrics) see every call's method, code and duration.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, cast

import grpc
from google.protobuf.message import DecodeError

from board_server.api.status import to_grpc_status
from board_server.core.errors import BoardError, FieldViolation, InvalidArgument, NotFound
from board_server.domain.accounts import ANONYMOUS, Accounts, Caller

logger = logging.getLogger(__name__)

_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("board_caller", default=ANONYMOUS)
# Calls that never look at a token: a stale token kept by a client must not keep it from signing in again.
_NO_AUTH = frozenset({"SignIn"})

Context = grpc.aio.ServicerContext[Any, Any]


def current_caller() -> Caller:
    """The caller of the call being served (set by the interceptor)."""
    return _CALLER.get()


class CallObserver(Protocol):
    """Sees every board call (metrics)."""

    def started(self, service: str, method: str) -> None: ...

    def handled(self, service: str, method: str, code: grpc.StatusCode, seconds: float) -> None: ...


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
        self._service = service
        self._accounts = accounts
        self._timeout = call_timeout_s
        self._observers = tuple(observers)
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
        return handler  # board.v1 has no client-streaming methods

    async def _enter(self, name: str, request: Any, context: Context) -> None:
        """Checks before the servicer runs: the request decoded, the caller authenticated."""
        if isinstance(request, _Undecodable):
            raise InvalidArgument(
                [
                    FieldViolation(
                        "request", f"is not a valid {self._service}.{name} request: {request.reason}"
                    )
                ]
            )
        authorization = None
        if name not in _NO_AUTH:
            for key, value in context.invocation_metadata() or ():
                if key == "authorization":
                    authorization = value if isinstance(value, str) else ""
                    break
        _CALLER.set(await self._accounts.authenticate(authorization, peer_address(context.peer())))

    def _unary(self, name: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def guarded(request: Any, context: Context) -> Any:
            # A client deadline sooner than ours cancels the call by itself (gRPC cancels its task): a second
            # cancellation at the same moment would interrupt the database's cancel of the statement.
            remaining = context.time_remaining()
            timeout = self._timeout if remaining is None or remaining >= self._timeout else None
            async with self._outcome(name, context), asyncio.timeout(timeout):
                await self._enter(name, request, context)
                return await behaviour(request, context)

        return guarded

    def _stream(
        self, name: str, behaviour: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            async with self._outcome(name, context):
                await self._enter(name, request, context)
                async for item in behaviour(request, context):
                    yield item

        return guarded

    @asynccontextmanager
    async def _outcome(self, name: str, context: Context) -> AsyncIterator[None]:
        """Around one call: observers told of its start and end, every exception turned into its status."""
        started = time.perf_counter()
        for observer in self._observers:
            observer.started(self._service, name)
        code = grpc.StatusCode.OK
        try:
            yield
        except BoardError as exc:
            status = self._status_of(name, exc)
            code = status.code
            await context.abort(status.code, status.details, status.trailing_metadata)
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            logger.warning("%s reached its deadline (%.1fs at most)", name, self._timeout)
            await context.abort(code, f"the server gave up after {self._timeout:g} s; retry later")
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN  # aborted on purpose further down
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            logger.exception("%s failed", name)
            await context.abort(code, "internal error")
        finally:
            self._observe(name, code, started)

    @staticmethod
    def _status_of(name: str, exc: BoardError) -> grpc.Status:
        if isinstance(exc, NotFound):
            logger.info("%s: %s", name, exc.message)  # the ordinary log, never the audit log
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %s", name, exc.message)
        return to_grpc_status(exc)

    def _observe(self, name: str, code: grpc.StatusCode, started: float) -> None:
        if self._observers:
            seconds = time.perf_counter() - started
            for observer in self._observers:
                observer.handled(self._service, name, code, seconds)
