"""The one error mapping: domain errors → canonical codes with details; anything else → generic INTERNAL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from board_server.errors import (
    AlreadyExists,
    DatabaseBusy,
    FieldViolation,
    InvalidArgument,
    PostNotFound,
    status_code,
)
from board_server.server import ErrorMappingInterceptor
from clients.board import BoardClientError, InvalidArgumentError, error_from_rpc

FAULTS: dict[str, Exception] = {
    "invalid": InvalidArgument([FieldViolation("title", "must not be blank")]),
    "missing": PostNotFound(7),
    "duplicate": AlreadyExists("taken"),
    "busy": DatabaseBusy("busy"),
    "bug": ZeroDivisionError("secret detail"),
}


@pytest.fixture(scope="module")
def faulty_target() -> Iterator[str]:
    """An in-process server whose method `/t.T/<fault>` raises FAULTS[fault] behind the interceptor."""

    def handler_for(name: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        def raise_fault(request: bytes, context: Any) -> bytes:
            raise FAULTS[name]

        return grpc.unary_unary_rpc_method_handler(raise_fault)

    handlers = {name: handler_for(name) for name in FAULTS}
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[ErrorMappingInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def call(target: str, name: str) -> BoardClientError:
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary(f"/t.T/{name}", None, None)(b"", timeout=10)
        except grpc.RpcError as exc:
            return error_from_rpc(exc)
    raise AssertionError("the call should have failed")


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT),
        ("missing", grpc.StatusCode.NOT_FOUND),
        ("duplicate", grpc.StatusCode.ALREADY_EXISTS),
        ("busy", grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_domain_errors_map_to_their_codes(faulty_target: str, name: str, code: grpc.StatusCode) -> None:
    error = call(faulty_target, name)
    assert error.code == code
    assert status_code(FAULTS[name]) == code  # type: ignore[arg-type]


def test_invalid_argument_carries_field_violations(faulty_target: str) -> None:
    error = call(faulty_target, "invalid")
    assert isinstance(error, InvalidArgumentError)
    assert [(v.field, v.description) for v in error.violations] == [("title", "must not be blank")]


def test_not_found_message_names_resource_and_id(faulty_target: str) -> None:
    assert call(faulty_target, "missing").message == "Post not found; id=7"


def test_unexpected_exception_is_logged_and_generic_internal(
    faulty_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="board_server.server"):
        error = call(faulty_target, "bug")
    assert error.code == grpc.StatusCode.INTERNAL
    assert error.message == "internal error" and "secret" not in error.message
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
