"""board.v1 over Connect and gRPC-Web: connectrpc's ASGI application (generated into clients/gen by
`make proto`), each of whose methods is the gRPC servicer's own (api/servicer.py: proto → use case → proto)
behind the same CallGuard as gRPC's interceptor (api/calls.py). Nothing here knows a rule of the board.

What differs from gRPC is only the wire: the caller's ``authorization`` header (or the session cookie the
HTTP listener turned into one), statuses sent as ConnectError with the same google.rpc details, request
bytes that do not parse answered INVALID_ARGUMENT with the same BadRequest, and the browser's session:
SignIn may answer with a cookie instead of the token, SignOut clears it (api/web_session.py).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, cast

import grpc
from connectrpc.code import Code
from connectrpc.codec import Codec
from connectrpc.compat import google_protobuf_codecs
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.request import RequestContext
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import status_pb2  # type: ignore[import-untyped]
from protobuf.wkt import Any as AnyMessage

from board_server.api import web_session
from board_server.api.calls import CallGuard, CallObserver, code_of, http_peer, undecodable
from board_server.api.servicer import BoardServicer
from board_server.api.status import rich_status
from board_server.domain.accounts import Accounts
from clients.gen.board.v1 import board_pb2, board_pb2_grpc
from clients.gen.board.v1.board_connect import BoardService, BoardServiceASGIApplication

Context = RequestContext[Any, Any]
SERVICE = board_pb2.DESCRIPTOR.services_by_name["BoardService"]
_METHOD_OF_REQUEST = {m.input_type.full_name: m.name for m in SERVICE.methods}


def protocol_of(content_type: str) -> str:
    """What carried a call to the HTTP listener, from its content type (the metrics' ``protocol``)."""
    if content_type.startswith("application/grpc-web"):
        return "grpc-web"
    if content_type.startswith("application/grpc"):
        return "grpc"
    return "connect"


def connect_error(status: status_pb2.Status) -> ConnectError:
    """A google.rpc.Status as Connect sends it: the same code, message and details."""
    name = code_of(status).name
    code = Code.CANCELED if name == "CANCELLED" else Code[name]
    details = [ErrorDetail(AnyMessage(type_url=d.type_url, value=d.value)) for d in status.details]
    return ConnectError(code, status.message, details)


class _RequestCodec:
    """A codec whose undecodable requests are INVALID_ARGUMENT with the BadRequest gRPC gives them."""

    def __init__(self, inner: Codec[Message, Any]) -> None:
        self._inner = inner
        self._json = inner.name() == "json"

    def name(self) -> str:
        return self._inner.name()

    def encode(self, message: Message) -> bytes:
        if self._json:
            return json_format.MessageToJson(message, indent=None).encode()  # compact, not indented
        return self._inner.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        try:
            return self._inner.decode(data, message_class)
        except Exception as exc:
            name = _METHOD_OF_REQUEST.get(message_class.DESCRIPTOR.full_name, message_class.__name__)
            text = str(exc)
            if "utf-8" in text.lower():
                reason = "a string field holds invalid UTF-8"
            elif self._json:
                reason = f"the JSON does not parse: {text[:200]}"
            else:
                reason = "the bytes do not parse"
            raise connect_error(rich_status(undecodable(SERVICE.full_name, name, reason))) from exc


async def _raise(status: status_pb2.Status) -> NoReturn:
    raise connect_error(status)


def _raised_below(exc: Exception) -> grpc.StatusCode | None:
    if isinstance(exc, ConnectError):
        name = "CANCELLED" if exc.code is Code.CANCELED else exc.code.name
        return grpc.StatusCode[name]
    return None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class _Methods:
    """The Connect service: attributes named as the generated code looks them up (``get_post``)."""

    def __init__(self, methods: dict[str, Callable[..., Any]]) -> None:
        self._methods = methods

    def __getattr__(self, name: str) -> Callable[..., Any]:
        try:
            return self._methods[name]
        except KeyError:
            raise AttributeError(name) from None


class ConnectService:
    """board.v1 for connectrpc: every method of the servicer behind the CallGuard."""

    def __init__(
        self,
        servicer: BoardServicer,
        guard: CallGuard,
        *,
        session_max_age_s: int,
        secure_cookie: bool,
    ) -> None:
        self._servicer = servicer
        self._guard = guard
        self._max_age = session_max_age_s
        self._secure = secure_cookie

    def methods(self) -> _Methods:
        made: dict[str, Callable[..., Any]] = {}
        for method in SERVICE.methods:
            name = method.name
            if getattr(type(self._servicer), name) is getattr(board_pb2_grpc.BoardServiceServicer, name):
                made[_snake(name)] = self._unimplemented(method.client_streaming, method.server_streaming)
                continue
            behaviour = getattr(self._servicer, name)
            if method.server_streaming:
                made[_snake(name)] = self._stream(name, behaviour)
            else:
                made[_snake(name)] = self._unary(name, behaviour)
        return _Methods(made)

    def _unary(self, name: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        guard = self._guard
        after = {"SignIn": self._signed_in, "SignOut": self._signed_out}.get(name)

        async def guarded(request: Any, ctx: Context) -> Any:
            headers = ctx.request_headers
            protocol = protocol_of(headers.get("content-type", ""))
            with guard.span(name, protocol, headers.get("traceparent")):
                async with guard.outcome(name, protocol, _raise, _raised_below), guard.deadline():
                    await guard.admit(name, headers.get("authorization"), http_peer())
                    response = await behaviour(request, ctx)
                    if after is not None:
                        after(response, ctx)
                    return response

        return guarded

    def _stream(
        self, name: str, behaviour: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        guard = self._guard

        async def guarded(request: Any, ctx: Context) -> AsyncIterator[Any]:
            headers = ctx.request_headers
            protocol = protocol_of(headers.get("content-type", ""))
            with guard.span(name, protocol, headers.get("traceparent")):
                async with guard.outcome(name, protocol, _raise, _raised_below):
                    await guard.admit(name, headers.get("authorization"), http_peer())
                    async for item in behaviour(request, ctx):
                        yield item

        return guarded

    @staticmethod
    def _unimplemented(client_streaming: bool, server_streaming: bool) -> Callable[..., Any]:
        """What a method the servicer does not implement answers (as gRPC does: UNIMPLEMENTED)."""
        error = ConnectError(Code.UNIMPLEMENTED, "Method not implemented!")

        async def unary(request: Any, ctx: Context) -> Any:
            raise error

        async def stream(request: Any, ctx: Context) -> AsyncIterator[Any]:
            raise error
            yield  # an async generator, as the endpoint expects

        return stream if server_streaming else unary

    def _signed_in(self, response: board_pb2.SignInResponse, ctx: Context) -> None:
        if web_session.wants_cookie(ctx.request_headers):
            cookie = web_session.session_cookie(response.access_token, self._max_age, secure=self._secure)
            ctx.response_headers.add("set-cookie", cookie)
            response.access_token = ""  # the page never holds the token

    def _signed_out(self, response: object, ctx: Context) -> None:
        ctx.response_headers.add("set-cookie", web_session.cleared_cookie(secure=self._secure))


def connect_application(
    servicer: BoardServicer,
    accounts: Accounts,
    *,
    call_timeout_s: float,
    max_in_flight: int,
    read_max_bytes: int,
    session_max_age_s: int,
    secure_cookie: bool,
    observers: Sequence[CallObserver] = (),
) -> BoardServiceASGIApplication:
    """The ASGI application of board.v1 over Connect and gRPC-Web (binary and JSON)."""
    guard = CallGuard(
        SERVICE.full_name,
        accounts,
        call_timeout_s=call_timeout_s,
        observers=observers,
        max_in_flight=max_in_flight,
        traced=True,
    )
    service = ConnectService(
        servicer, guard, session_max_age_s=session_max_age_s, secure_cookie=secure_cookie
    )
    codecs = [_RequestCodec(codec) for codec in google_protobuf_codecs()]
    return BoardServiceASGIApplication(
        cast(BoardService, service.methods()), read_max_bytes=read_max_bytes, codecs=codecs
    )
