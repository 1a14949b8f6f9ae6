"""The one interceptor of the board's calls: per-client limits, decoding, who is calling, deadline, errors,
and call observers.

For every board.v1 method, once per method (the wrapped handler is cached):

- every method takes its request as a stream (a unary request is a one-message stream on the wire, so
  clients see no difference): the handler runs when the headers arrive, before any message, so that the
  peer's and the user's calls in progress are counted from that moment (api/limits.py; RESOURCE_EXHAUSTED
  beyond ``max_calls_per_peer``), the caller is authenticated from the headers before a byte of the body is
  read, and a request that has not arrived within ``request_timeout_s`` ends the call (DEADLINE_EXCEEDED);
  an upload's every message must arrive within it, and the whole upload within ``upload_timeout_s``;
- requests that protobuf cannot decode (invalid UTF-8 in a string field, truncated bytes) are answered
  INVALID_ARGUMENT instead of the INTERNAL that gRPC would give;
- the ``authorization`` metadata is turned into the ``Caller`` that ``current_caller()`` returns to the
  servicer (a bad token is UNAUTHENTICATED here; the service decides what the caller may do);
- a unary call gets a server-side deadline (``call_timeout_s``): DEADLINE_EXCEEDED rather than a stuck task;
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
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, cast

import grpc
from google.protobuf.message import DecodeError

from board_server.api.limits import (
    EOF,
    CallLimits,
    CallsInProgress,
    PeerIdentity,
    RequestTimedOut,
    limit_other,
    messages_within,
    peer_key,
    read_within,
)
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


if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # grpc's runtime class is not generic; only its stubs are.
    _ServerInterceptor = grpc.aio.ServerInterceptor


class BoardInterceptor(_ServerInterceptor):
    """See the module docstring. board.v1 gets all of it; health and reflection the peer limits alone."""

    def __init__(
        self,
        service: str,
        accounts: Accounts,
        *,
        call_timeout_s: float,
        limits: CallLimits,
        observers: Sequence[CallObserver] = (),
    ) -> None:
        self._prefix = f"/{service}/"
        self._service = service
        self._accounts = accounts
        self._timeout = call_timeout_s
        self._limits = limits
        self._peers = PeerIdentity(limits.trusted_proxies)
        self._calls = CallsInProgress(limits.max_calls_per_peer)
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
        if handler is None:
            return handler
        if method.startswith(self._prefix):
            wrapped = self._wrap(method[len(self._prefix) :], handler)
        elif self._limits.enabled:
            wrapped = limit_other(handler, self._peers, self._calls, self._limits.request_timeout_s)
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

    async def _admit(self, name: str, context: Context) -> tuple[str, ...]:
        """From the headers alone: the peer's call counted, the caller authenticated (``current_caller()``,
        with ``Caller.peer``), the user's call counted. Returns the keys counted, for ``_release``."""
        metadata = context.invocation_metadata()
        peer = self._peers.identify(context.peer(), metadata)
        authorization = None
        if name not in _NO_AUTH:
            for key, value in metadata or ():
                if key == "authorization":
                    authorization = value if isinstance(value, str) else ""
                    break
        if not self._limits.enabled:
            _CALLER.set(replace(await self._accounts.authenticate(authorization), peer=peer))
            return ()
        address = peer_key(peer)
        self._calls.enter(address, "this address")
        try:
            caller = replace(await self._accounts.authenticate(authorization), peer=peer)
            _CALLER.set(caller)
            if caller.user_id is None:
                return (address,)
            user = f"user:{caller.user_id}"
            self._calls.enter(user, "this user")
        except BaseException:
            self._calls.leave(address)
            raise
        return (address, user)

    def _release(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self._calls.leave(key)

    @asynccontextmanager
    async def _admitted(self, name: str, context: Context) -> AsyncIterator[None]:
        """``_admit`` for the duration of the block."""
        keys = await self._admit(name, context)
        try:
            yield
        finally:
            self._release(keys)

    async def _request(self, name: str, context: Context) -> Any:
        """The one message of a unary request, within the request timeout, decoded."""
        request = await read_within(context, self._limits.request_timeout_s)
        return self._decoded_request(name, request)

    def _decoded_request(self, name: str, request: Any) -> Any:
        if request is None or request is EOF:
            raise InvalidArgument([FieldViolation("request", "the call ended before its request message")])
        if isinstance(request, _Undecodable):
            raise InvalidArgument(
                [
                    FieldViolation(
                        "request", f"is not a valid {self._service}.{name} request: {request.reason}"
                    )
                ]
            )
        return request

    # --- the three kinds of board.v1 method ----------------------------------------------------------------

    def _unary(self, name: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        request_timeout, call_timeout = self._limits.request_timeout_s, self._timeout

        async def guarded(requests: AsyncIterator[Any], context: Context) -> Any:
            async with self._outcome(name, context):
                arrived = False
                try:
                    # One deadline: the request's, then (once it has arrived) the call's, both from the start.
                    async with asyncio.timeout(request_timeout) as deadline:
                        keys = await self._admit(name, context)
                        try:
                            request = await context.read()
                            arrived = True
                            when = deadline.when()
                            if when is not None:
                                deadline.reschedule(when - request_timeout + call_timeout)
                            return await behaviour(self._decoded_request(name, request), context)
                        finally:
                            self._release(keys)
                except TimeoutError:
                    if not arrived:
                        raise RequestTimedOut(request_timeout) from None
                    raise

        return guarded

    def _stream(
        self, name: str, behaviour: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def guarded(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async with self._outcome(name, context), self._admitted(name, context):
                request = await self._request(name, context)
                async for item in behaviour(request, context):
                    yield item

        return guarded

    def _upload(self, name: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def guarded(requests: AsyncIterator[Any], context: Context) -> Any:
            timeout = self._limits.upload_timeout_s
            async with (
                self._outcome(name, context, timeout),
                asyncio.timeout(timeout),
                self._admitted(name, context),
            ):
                messages = messages_within(context, self._limits.request_timeout_s, every=True)
                return await behaviour(self._decoded(name, messages), context)

        return guarded

    # --- with the per-client limits off (measuring their cost): gRPC reads a unary request first ------------

    def _unary_as_read(
        self, name: str, behaviour: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def guarded(request: Any, context: Context) -> Any:
            async with self._outcome(name, context), asyncio.timeout(self._timeout):
                keys = await self._admit(name, context)
                try:
                    return await behaviour(self._decoded_request(name, request), context)
                finally:
                    self._release(keys)

        return guarded

    def _stream_as_read(
        self, name: str, behaviour: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            async with self._outcome(name, context), self._admitted(name, context):
                async for item in behaviour(self._decoded_request(name, request), context):
                    yield item

        return guarded

    async def _decoded(self, name: str, messages: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for message in messages:
            yield self._decoded_request(name, message)

    @asynccontextmanager
    async def _outcome(
        self, name: str, context: Context, timeout_s: float | None = None
    ) -> AsyncIterator[None]:
        """Around one call: observers told of its start and end, every exception turned into its status
        (``timeout_s``: the call's own deadline, when not the call timeout)."""
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
        except RequestTimedOut as exc:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            await context.abort(code, str(exc))
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            seconds = self._timeout if timeout_s is None else timeout_s
            logger.warning("%s gave up after %.1fs (server-side deadline)", name, seconds)
            await context.abort(code, f"the server gave up after {seconds:g} s; retry later")
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
