"""The one interceptor of board calls (board_server/api/interceptors.py BoardInterceptor) on an in-process
grpc.aio server, with real Accounts on a real (migrated) SQLite database, in front of handlers that fail on
purpose: domain errors map to their codes with details, anything else is a generic INTERNAL with the
traceback in the log, undecodable requests are INVALID_ARGUMENT, a slow call meets the server-side deadline,
tokens become callers (or UNAUTHENTICATED), streams map errors too, messages stay bounded, not-found goes to
the ordinary log and never to the audit log, and observers see every call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from board_server.api.calls import current_caller
from board_server.api.interceptors import BoardInterceptor
from board_server.api.limits import CallLimits, ClientLimits
from board_server.core.errors import (
    MAX_VIOLATIONS,
    AlreadyExists,
    DatabaseBusy,
    DatabaseUnavailable,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    PostNotFound,
    ResourceExhausted,
    Unauthenticated,
)
from board_server.domain.accounts import ANONYMOUS, Accounts
from board_server.runtime.config import Settings
from board_server.storage import users as user_rows
from board_server.storage.engine import Database, migrate, open_database
from clients.board import BoardClientError, InvalidArgumentError, ResourceExhaustedError, error_from_rpc
from clients.gen.board.v1 import board_pb2

pytestmark = pytest.mark.integration  # each test serves its calls from an in-process gRPC server

SERVICE = "test.v1.Faults"
# The server-side deadline: short for the test that meets it, long for every other test, so that a call
# slowed by a loaded machine never meets it by accident.
SHORT_CALL_TIMEOUT_S = 0.5
CALL_TIMEOUT_S = 20.0  # under the client's own 30 s
# The defaults of the per-client limits (nothing here comes near them).
PASSWORD = "interceptor-password"

FAULTS: dict[str, Exception] = {
    "Invalid": InvalidArgument([FieldViolation("title", "must not be blank")]),
    "Missing": PostNotFound(7),
    "Duplicate": AlreadyExists("that email is taken"),
    "Busy": DatabaseBusy("the database is busy; retry the call"),
    "Down": DatabaseUnavailable("the database cannot be reached; retry the call"),
    "Precondition": FailedPrecondition("attachment 3 is PENDING"),
    "Denied": PermissionDenied("only its author or an admin may change this post"),
    "Unknown": Unauthenticated("the access token is unknown or revoked; sign in again"),
    "Full": ResourceExhausted("post 3 already has 20 attachments", retry_after_s=2.5),
    "Many": InvalidArgument([FieldViolation("update_mask", f"unknown field 'p{i}'") for i in range(500)]),
    "Bug": ZeroDivisionError("secret detail"),
}
CODES = {
    "Invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "Missing": grpc.StatusCode.NOT_FOUND,
    "Duplicate": grpc.StatusCode.ALREADY_EXISTS,
    "Busy": grpc.StatusCode.UNAVAILABLE,
    "Down": grpc.StatusCode.UNAVAILABLE,
    "Precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "Denied": grpc.StatusCode.PERMISSION_DENIED,
    "Unknown": grpc.StatusCode.UNAUTHENTICATED,
    "Full": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "Many": grpc.StatusCode.INVALID_ARGUMENT,
    "Bug": grpc.StatusCode.INTERNAL,
}


@dataclass
class Recorder:
    """A CallObserver (the interceptor's hook for metrics) that keeps what it saw."""

    began: list[str] = field(default_factory=list)
    ended: list[tuple[str, grpc.StatusCode]] = field(default_factory=list)

    def started(self, service: str, method: str, *, protocol: str = "grpc") -> None:
        assert protocol == "grpc"
        self.began.append(method)

    def handled(
        self, service: str, method: str, code: grpc.StatusCode, seconds: float, *, protocol: str = "grpc"
    ) -> None:
        assert service == SERVICE and seconds >= 0 and protocol == "grpc"
        self.ended.append((method, code))

    async def until_ended(self, count: int, timeout: float = 10.0) -> None:
        """Until ``count`` calls have ended: the server hears of a call's end after its status went out, so
        after the client may have read it."""
        async with asyncio.timeout(timeout):
            while len(self.ended) < count:
                await asyncio.sleep(0.005)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    path = tmp_path_factory.mktemp("interceptor") / "board.db"
    db = open_database(f"sqlite:///{path}")
    migrate(db.engine)
    yield db
    db.dispose()


def unary(
    behaviour: Callable[[Any], Awaitable[bytes]], deserializer: Any = None
) -> grpc.RpcMethodHandler[Any, Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return await behaviour(request)

    return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=deserializer)


def handlers() -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    def failing(name: str) -> grpc.RpcMethodHandler[Any, Any]:
        async def fail(request: Any) -> bytes:
            raise FAULTS[name]

        return unary(fail)

    async def slow(request: Any) -> bytes:
        await asyncio.sleep(30)
        return b"too late"

    async def caller(request: Any) -> bytes:
        who = current_caller()
        return f"{who.user_id}".encode()

    async def title(request: board_pb2.CreatePostRequest) -> bytes:
        return request.title.encode()

    async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        yield b"first"
        raise PostNotFound(9)

    async def stream_bug(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        yield b"first"
        raise KeyError("secret key")

    made = {name: failing(name) for name in FAULTS}
    made["Slow"] = unary(slow)
    made["Caller"] = unary(caller)
    made["Title"] = unary(title, board_pb2.CreatePostRequest.FromString)
    made["Stream"] = grpc.unary_stream_rpc_method_handler(stream)
    made["StreamBug"] = grpc.unary_stream_rpc_method_handler(stream_bug)
    return made


@dataclass
class Faulty:
    """A running in-process server with the interceptor, a channel to it, and what the recorder saw."""

    channel: grpc.aio.Channel
    accounts: Accounts
    recorder: Recorder

    async def call(self, method: str, request: bytes = b"", token: str | None = None) -> bytes:
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
        reply = await self.channel.unary_unary(f"/{SERVICE}/{method}", None, None)(
            request, timeout=30, metadata=metadata
        )
        assert isinstance(reply, bytes)
        return reply

    async def failure(self, method: str, request: bytes = b"", token: str | None = None) -> BoardClientError:
        try:
            await self.call(method, request, token)
        except grpc.aio.AioRpcError as exc:
            return error_from_rpc(exc)
        raise AssertionError(f"{method} should have failed")


def run(
    database: Database,
    scenario: Callable[[Faulty], Awaitable[None]],
    call_timeout_s: float = CALL_TIMEOUT_S,
) -> None:
    """Start the server on a free port, run ``scenario`` against it in the same event loop, stop it."""

    async def main() -> None:
        accounts = Accounts(database, auth=True, reads_need_sign_in=False, token_lifetime=timedelta(days=1))
        recorder = Recorder()
        interceptor = BoardInterceptor(
            SERVICE,
            accounts,
            call_timeout_s=call_timeout_s,
            limits=ClientLimits(CallLimits.of(Settings())),
            observers=[recorder],
        )
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers())])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await scenario(Faulty(channel, accounts, recorder))
        finally:
            await server.stop(0)
            accounts.close()

    asyncio.run(main())


@pytest.mark.parametrize("name", sorted(CODES))
def test_each_error_maps_to_its_code(database: Database, name: str) -> None:
    async def scenario(faulty: Faulty) -> None:
        assert (await faulty.failure(name)).code == CODES[name]

    run(database, scenario)


def test_invalid_argument_carries_field_violations(database: Database) -> None:
    async def scenario(faulty: Faulty) -> None:
        error = await faulty.failure("Invalid")
        assert isinstance(error, InvalidArgumentError)
        assert [(v.field, v.description) for v in error.violations] == [("title", "must not be blank")]
        assert error.message == "title: must not be blank"

    run(database, scenario)


def test_many_violations_are_capped_in_message_and_details(database: Database) -> None:
    async def scenario(faulty: Faulty) -> None:
        error = await faulty.failure("Many")
        assert len(error.violations) == MAX_VIOLATIONS
        assert error.message.endswith(f"and {500 - MAX_VIOLATIONS} more")
        assert len(error.message) < 1000

    run(database, scenario)


def test_resource_exhausted_carries_retry_info(database: Database) -> None:
    async def scenario(faulty: Faulty) -> None:
        error = await faulty.failure("Full")
        assert isinstance(error, ResourceExhaustedError)
        assert error.retry_after == 3.0  # rounded up to whole seconds

    run(database, scenario)


def test_unexpected_exception_is_logged_and_answered_generic_internal(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(faulty: Faulty) -> None:
        error = await faulty.failure("Bug")
        assert error.message == "internal error" and not error.violations

    with caplog.at_level(logging.ERROR, logger="board_server.api.interceptors"):
        run(database, scenario)
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    assert all("secret detail" not in r.getMessage() or r.exc_info for r in caplog.records)


def test_not_found_goes_to_the_ordinary_log_never_the_audit_log(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(faulty: Faulty) -> None:
        for _ in range(20):
            assert (await faulty.failure("Missing")).message == "Post not found; id=7"

    with caplog.at_level(logging.DEBUG):
        run(database, scenario)
    not_found = [r for r in caplog.records if "Post not found; id=7" in r.getMessage()]
    assert len(not_found) == 20
    assert {r.name for r in not_found} == {"board_server.api.calls"}
    assert not [r for r in caplog.records if r.name == "board.audit"]


def test_undecodable_requests_are_invalid_argument(database: Database) -> None:
    async def scenario(faulty: Faulty) -> None:
        good = board_pb2.CreatePostRequest(title="héllo").SerializeToString()
        assert await faulty.call("Title", good) == "héllo".encode()
        invalid_utf8 = b"\x12\x03a\xff\xfe"  # field 2 (title), 3 bytes, not UTF-8
        error = await faulty.failure("Title", invalid_utf8)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in error.message
        for garbage in (good[:-2], b"\x12\xff\xff\xff\xff\x0f", b"\x0b" * 50, b"\xff" * 12):
            error = await faulty.failure("Title", garbage)
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT, garbage
            assert [v.field for v in error.violations] == ["request"]

    run(database, scenario)


def test_a_slow_call_meets_the_server_side_deadline(database: Database) -> None:
    async def scenario(faulty: Faulty) -> None:
        error = await faulty.failure("Slow")
        assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert f"the server gave up after {SHORT_CALL_TIMEOUT_S:g} s" in error.message
        await faulty.recorder.until_ended(1)
        assert faulty.recorder.ended == [("Slow", grpc.StatusCode.DEADLINE_EXCEEDED)]

    run(database, scenario, call_timeout_s=SHORT_CALL_TIMEOUT_S)


def test_tokens_become_callers(database: Database) -> None:
    async def scenario(faulty: Faulty) -> None:
        email = f"i-{datetime.now(UTC).timestamp()}@example.org"
        hashed = await faulty.accounts.hash_password(PASSWORD)
        user = await database.run_write(
            lambda conn: user_rows.add_user(
                conn,
                name="Inter",
                email=email,
                email_canonical=email,
                now=datetime.now(UTC),
                password_hash=hashed,
            )
        )
        session = await faulty.accounts.sign_in(ANONYMOUS, email, PASSWORD)
        assert await faulty.call("Caller", token=session.token) == str(user.id).encode()
        assert await faulty.call("Caller") == b"None"  # anonymous
        for bad in ("x" * 43, "", "y" * 5000):
            assert (await faulty.failure("Caller", token=bad)).code == grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", "Basic dXNlcjpwYXNz"),)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await faulty.channel.unary_unary(f"/{SERVICE}/Caller", None, None)(
                b"", timeout=30, metadata=metadata
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    run(database, scenario)


def test_stream_errors_map_after_the_first_message(database: Database) -> None:
    async def scenario(faulty: Faulty) -> None:
        for method, code in (("Stream", grpc.StatusCode.NOT_FOUND), ("StreamBug", grpc.StatusCode.INTERNAL)):
            received: list[bytes] = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for item in faulty.channel.unary_stream(f"/{SERVICE}/{method}", None, None)(
                    b"", timeout=30
                ):
                    received.append(item)
            assert received == [b"first"]
            assert caught.value.code() == code
            assert "secret" not in (caught.value.details() or "")

    run(database, scenario)


def test_observers_see_every_call_with_its_code(database: Database) -> None:
    async def scenario(faulty: Faulty) -> None:
        await faulty.failure("Missing")
        await faulty.failure("Bug")
        await faulty.call("Caller")
        await faulty.recorder.until_ended(3)
        assert faulty.recorder.began == ["Missing", "Bug", "Caller"]
        assert faulty.recorder.ended == [
            ("Missing", grpc.StatusCode.NOT_FOUND),
            ("Bug", grpc.StatusCode.INTERNAL),
            ("Caller", grpc.StatusCode.OK),
        ]

    run(database, scenario)
