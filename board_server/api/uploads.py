"""The browser's photo upload: ``POST /v1/posts/{post_id}/attachments?filename=NAME`` with the raw image as
the body (browsers cannot stream a request over Connect, and XMLHttpRequest reports upload progress).

The caller is authenticated (the session cookie or an ``authorization`` header) and the declared
``Content-Length`` checked against the attachment limit before a byte of the body is read; the body is then
read as it arrives, never past its declared length, and handed to the AddAttachment use case, the same one
gRPC's AddAttachment calls. The answer is the Attachment in protobuf's JSON form (200), or an error in
Connect's JSON form (code, message, google.rpc details) with Connect's HTTP status for its code.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn
from urllib.parse import parse_qs

import grpc
from google.protobuf import json_format
from google.rpc import status_pb2  # type: ignore[import-untyped]

from board_server.api.calls import CallGuard, code_of, http_peer
from board_server.api.limits import FORWARDED_FOR
from board_server.api.messages import attachment_to_proto
from board_server.core import spans
from board_server.core.errors import FieldViolation, InvalidArgument, Unauthenticated
from board_server.domain.board import Board
from board_server.domain.images import check_upload_size

PATH = re.compile(r"^/v1/posts/(\d{1,18})/attachments$")
METHOD = "AddAttachment"
PROTOCOL = "http"
ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

# Connect's HTTP status for each code (connectrpc.com/docs/protocol, "Error Codes").
_HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class _AnsweredError(Exception):
    """The call ended with a status that is to be sent as the answer."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


class _ClientGoneError(Exception):
    """The client went away before its body arrived: nobody is left to answer."""


def error_body(status: status_pb2.Status) -> tuple[int, bytes]:
    """(HTTP status, Connect's JSON error body) of a google.rpc.Status."""
    code = code_of(status)
    name = "canceled" if code is grpc.StatusCode.CANCELLED else code.name.lower()
    body: dict[str, Any] = {"code": name, "message": status.message}
    if status.details:
        body["details"] = [
            {
                "type": d.type_url.rsplit("/", 1)[-1],
                "value": base64.b64encode(d.value).decode().rstrip("="),
            }
            for d in status.details
        ]
    return _HTTP_STATUS.get(code, 500), json.dumps(body).encode()


async def _read_body(receive: ASGIReceive, length: int) -> bytes:
    """The request body, which must be exactly ``length`` bytes."""
    data = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGoneError
        data += message.get("body", b"")
        if len(data) > length:
            raise InvalidArgument([FieldViolation("data", f"is longer than its Content-Length ({length})")])
        if not message.get("more_body", False):
            break
    if len(data) != length:
        raise InvalidArgument([FieldViolation("data", f"ended after {len(data)} of {length} bytes")])
    return bytes(data)


class UploadEndpoint:
    """``POST /v1/posts/{post_id}/attachments`` (see the module docstring)."""

    def __init__(self, board: Board, guard: CallGuard) -> None:
        self._board = board
        self._guard = guard

    async def __call__(
        self, scope: Mapping[str, Any], receive: ASGIReceive, send: ASGISend, headers: Mapping[str, str]
    ) -> None:
        match = PATH.match(scope["path"])
        assert match is not None  # the listener routes only matching paths here
        try:
            answer = await self._upload(int(match.group(1)), scope, receive, headers)
        except _AnsweredError as answered:
            status, body = error_body(answered.status)
            await respond(send, status, body)
        except _ClientGoneError:
            return
        else:
            await respond(send, 200, answer)

    async def _upload(
        self, post_id: int, scope: Mapping[str, Any], receive: ASGIReceive, headers: Mapping[str, str]
    ) -> bytes:
        guard = self._guard
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        with guard.span(METHOD, PROTOCOL, headers.get("traceparent")):
            forwarded = [headers[FORWARDED_FOR]] if FORWARDED_FOR in headers else []
            async with (
                guard.outcome(METHOD, PROTOCOL, _answer, _gone),
                guard.deadline(),
                guard.admitted(METHOD, headers.get("authorization"), http_peer(scope), forwarded) as caller,
            ):
                if not caller.signed_in and not caller.unrestricted:
                    raise Unauthenticated("uploading needs a signed-in caller: sign in first")
                length_text = headers.get("content-length", "")
                if not length_text.isdigit():
                    raise InvalidArgument([FieldViolation("data", "needs a Content-Length header")])
                attachments = self._board.attachments
                check_upload_size(int(length_text), attachments.max_bytes)
                data = await _read_body(receive, int(length_text))
                item = await attachments.add_attachment(
                    caller,
                    post_id,
                    filename=query.get("filename", [""])[0],
                    content_type=headers.get("content-type", ""),
                    data=data,
                    traceparent=spans.current_traceparent(),
                )
                return json_format.MessageToJson(attachment_to_proto(item), indent=None).encode()


async def _answer(status: status_pb2.Status) -> NoReturn:
    raise _AnsweredError(status)


def _gone(exc: Exception) -> grpc.StatusCode | None:
    return grpc.StatusCode.CANCELLED if isinstance(exc, _ClientGoneError) else None


async def respond(send: ASGISend, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
