"""What every board call goes through, whatever carries it (gRPC; Connect and gRPC-Web on the HTTP listener;
the HTTP upload): who is calling, the limit on calls in progress, the server-side deadline, errors → one
status, metrics and the call's span. The transports differ only in how they read the caller's credentials
and how they send a status; ``CallGuard`` does the rest for all of them alike.

- the credentials become the ``Caller`` that ``current_caller()`` returns to the adapter (a bad token is
  UNAUTHENTICATED here; the use case decides what the caller may do), with the client's address (behind a
  trusted proxy, the one it vouches for), which the limits per address key;
- the calls in progress per address and per signed-in user (api/limits.py's ``ClientLimits``, one per
  process and shared by the transports): RESOURCE_EXHAUSTED with RetryInfo and a QuotaFailure beyond;
- a unary call gets a server-side deadline (``call_timeout_s``; the transport ends it at the client's
  deadline when that is sooner): DEADLINE_EXCEEDED rather than a stuck task, and the call's database
  statement ends with it;
- domain errors become their google.rpc.Status (api/status.py's table, with details); anything else is
  logged with its traceback and answered INTERNAL "internal error" without detail;
- observers (metrics) see every call's method, protocol, code and duration.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from typing import Any, NoReturn, Protocol

import grpc
from google.rpc import status_pb2  # type: ignore[import-untyped]

from board_server.api.limits import ClientLimits, RequestTimedOut
from board_server.api.status import rich_status
from board_server.core import spans
from board_server.core.errors import BoardError, FieldViolation, InvalidArgument, NotFound, ResourceExhausted
from board_server.domain.accounts import ANONYMOUS, Accounts, Caller

logger = logging.getLogger(__name__)

_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("board_caller", default=ANONYMOUS)
# The client's address of an HTTP request, for the Connect handlers (whose context carries only headers).
_HTTP_PEER: contextvars.ContextVar[str] = contextvars.ContextVar("board_http_peer", default="")
# Calls that never look at a token: a stale token kept by a client must not keep it from signing in again.
NO_AUTH = frozenset({"SignIn"})
# google.rpc.Code and gRPC's status codes are the same numbers.
_CODES = {code.value[0]: code for code in grpc.StatusCode}

# How a transport sends a status to its caller; it never returns (it raises what the transport needs).
Abort = Callable[[status_pb2.Status], Awaitable[NoReturn]]


def current_caller() -> Caller:
    """The caller of the call being served (set by ``CallGuard.admit``)."""
    return _CALLER.get()


def http_peer(scope: Mapping[str, Any] | None = None) -> str:
    """The client's address of an HTTP request: from its ASGI ``scope``, or (without one) the address the
    listener recorded for the request being served."""
    if scope is None:
        return _HTTP_PEER.get()
    client = scope.get("client")
    return str(client[0]) if client else ""


def record_http_peer(scope: Mapping[str, Any]) -> None:
    """Remember the request's client address for the handlers that run under it."""
    _HTTP_PEER.set(http_peer(scope))


def code_of(status: status_pb2.Status) -> grpc.StatusCode:
    """The canonical code of a google.rpc.Status."""
    return _CODES.get(status.code, grpc.StatusCode.UNKNOWN)


def plain_status(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    """A status without details."""
    return status_pb2.Status(code=code.value[0], message=message)


def undecodable(service: str, name: str, reason: str) -> InvalidArgument:
    """The error for request bytes that are not the method's request message (never INTERNAL)."""
    return InvalidArgument([FieldViolation("request", f"is not a valid {service}.{name} request: {reason}")])


class CallObserver(Protocol):
    """Sees every board call (metrics); ``protocol`` is grpc, connect, grpc-web or http."""

    def started(self, service: str, method: str, *, protocol: str = "grpc") -> None: ...

    def handled(
        self, service: str, method: str, code: grpc.StatusCode, seconds: float, *, protocol: str = "grpc"
    ) -> None: ...


class CallGuard:
    """See the module docstring: one per transport and process.

    ``max_in_flight`` caps the calls in progress (RESOURCE_EXHAUSTED beyond; None where the transport has its
    own cap, as gRPC's core has). ``traced``: open a server span per call, continuing the caller's
    ``traceparent`` (off where the transport's own instrumentation makes that span, as for gRPC).
    ``limits``: the process's per-client limits (None: none, as for the board's own commands).
    """

    def __init__(
        self,
        service: str,
        accounts: Accounts,
        *,
        call_timeout_s: float,
        observers: Sequence[CallObserver] = (),
        max_in_flight: int | None = None,
        traced: bool = False,
        limits: ClientLimits | None = None,
    ) -> None:
        self.service = service
        self.limits = limits
        self._accounts = accounts
        self._timeout = call_timeout_s
        self._observers = tuple(observers)
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._traced = traced

    async def admit(self, name: str, authorization: str | None, peer: str) -> Caller:
        """Authenticate the caller of method ``name`` from its ``authorization`` value ('Bearer <token>' or
        None), calling from the address ``peer``, and make it ``current_caller()``; raise Unauthenticated
        for a bad token. Counts nothing: ``admitted`` is the call's whole admission."""
        caller = await self._accounts.authenticate(None if name in NO_AUTH else authorization, peer)
        _CALLER.set(caller)
        return caller

    @asynccontextmanager
    async def admitted(
        self, name: str, authorization: str | None, direct_peer: str, forwarded_for: Sequence[str] = ()
    ) -> AsyncIterator[Caller]:
        """For the duration of the block: the call counted against its peer (the connection's address
        ``direct_peer``, or behind a trusted proxy the one ``forwarded_for`` names), its caller authenticated
        (``admit``) and counted against its user. Raises QuotaExceeded beyond a limit, Unauthenticated."""
        with self.peer_counted(direct_peer, forwarded_for) as peer:
            async with self.caller_admitted(name, authorization, peer) as caller:
                yield caller

    @contextmanager
    def peer_counted(self, direct_peer: str, forwarded_for: Sequence[str] = ()) -> Iterator[str]:
        """The first half of ``admitted``, from the connection alone: the call counted against its peer for
        the duration of the block; yields the peer (the client's address). QuotaExceeded beyond the limit."""
        limits = self.limits
        if limits is None:
            yield direct_peer
            return
        peer = limits.peer(direct_peer, forwarded_for)
        counted = limits.enter_peer(peer)
        try:
            yield peer
        finally:
            limits.leave(counted)

    @asynccontextmanager
    async def caller_admitted(self, name: str, authorization: str | None, peer: str) -> AsyncIterator[Caller]:
        """The second half of ``admitted``: the caller of ``name`` calling from ``peer`` authenticated
        (``admit``) and counted against its user for the duration of the block."""
        caller = await self.admit(name, authorization, peer)
        counted = None if self.limits is None else self.limits.enter_user(caller.user_id)
        try:
            yield caller
        finally:
            if self.limits is not None:
                self.limits.leave(counted)

    @property
    def call_timeout_s(self) -> float:
        """The server-side deadline of a unary call."""
        return self._timeout

    def deadline(self, client_remaining_s: float | None = None) -> asyncio.Timeout:
        """The server-side deadline of a unary call (a context manager). None when the client's own deadline
        (``client_remaining_s``) comes sooner: the transport cancels the call then, and a second
        cancellation at the same moment would interrupt the database's cancel of the statement."""
        if client_remaining_s is not None and client_remaining_s < self._timeout:
            return asyncio.timeout(None)
        return asyncio.timeout(self._timeout)

    def span(self, name: str, protocol: str, traceparent: str | None) -> AbstractContextManager[None]:
        """The call's server span (when this guard makes spans)."""
        if not self._traced:
            return nullcontext()
        attributes = {"rpc.system": protocol, "rpc.service": self.service, "rpc.method": name}
        return spans.server_span(f"/{self.service}/{name}", traceparent=traceparent, **attributes)

    @asynccontextmanager
    async def outcome(
        self,
        name: str,
        protocol: str,
        abort: Abort,
        status_set_below: Callable[[Exception], grpc.StatusCode | None] = lambda exc: None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[None]:
        """Around one call: the in-flight cap, observers told of its start and end, every exception turned
        into its status and sent with ``abort``. ``status_set_below`` recognises an exception that already
        carries the transport's status (raised on purpose further down) and gives its code; ``timeout_s``
        is the call's own deadline when not the call timeout (an upload's)."""
        started = time.perf_counter()
        for observer in self._observers:
            observer.started(self.service, name, protocol=protocol)
        code = grpc.StatusCode.OK
        counted = False
        try:
            if self._max_in_flight is not None:
                if self._in_flight >= self._max_in_flight:
                    raise ResourceExhausted(
                        f"too many calls in progress (at most {self._max_in_flight}); retry later"
                    )
                self._in_flight += 1
                counted = True
            yield
        except BoardError as exc:
            status = self.status_of(name, exc)
            code = code_of(status)
            await abort(status)
        except RequestTimedOut as exc:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            await abort(plain_status(code, str(exc)))
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            seconds = self._timeout if timeout_s is None else timeout_s
            logger.warning("%s gave up after %.1fs (server-side deadline)", name, seconds)
            await abort(plain_status(code, f"the server gave up after {seconds:g} s; retry later"))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            below = status_set_below(exc)
            if below is not None:
                code = below
                raise
            code = grpc.StatusCode.INTERNAL
            logger.exception("%s failed", name)
            await abort(plain_status(code, "internal error"))
        finally:
            if counted:
                self._in_flight -= 1
            self._observe(name, protocol, code, started)

    @staticmethod
    def status_of(name: str, exc: BoardError) -> status_pb2.Status:
        """The status of a domain error, logged at the level its kind deserves."""
        if isinstance(exc, NotFound):
            logger.info("%s: %s", name, exc.message)  # the ordinary log, never the audit log
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %s", name, exc.message)
        return rich_status(exc)

    def _observe(self, name: str, protocol: str, code: grpc.StatusCode, started: float) -> None:
        if self._observers:
            seconds = time.perf_counter() - started
            for observer in self._observers:
                observer.handled(self.service, name, code, seconds, protocol=protocol)
