"""Limits per client against real board servers, the attackers on other loopback addresses (127.0.0.2, ...)
speaking HTTP/2 by hand (bench/starvation.py): calls in progress per address and per signed-in user, the
request timeout, and who the peer is behind a trusted proxy (x-forwarded-for).

A stream opened with HEADERS alone is a call whose request has not arrived: the server holds it until the
request timeout, counted against its peer from the first moment.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.starvation import (
    Abusers,
    RawGrpcConnection,
    RawStream,
    framed,
    half_sent_upload,
    measure_other_client,
)
from board_server.api.grpc_requests import peer_address
from board_server.api.limits import PeerIdentity, peer_key
from clients.board import ResourceExhaustedError
from clients.gen.board.v1 import board_pb2
from tests.board.conftest import Member, RunningServer, sign_up, start_board_server, tiny_png
from tests.support import Processes, wait_for

GENEROUS = 20.0
BOARD = "/board.v1.BoardService/"
ATTACKER, OTHER_ATTACKER, PROXY = "127.0.0.2", "127.0.0.3", "127.0.0.4"
CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED = (str(c.value[0]) for c in (
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED
))  # fmt: skip


def serve(processes: Processes, tmp_path: Path, *flags: str) -> RunningServer:
    """A board server with its defaults (one process), but ``flags``."""
    extra = ("--processes", "1", "--metrics-address", "none", *flags)
    return start_board_server(processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path, extra=extra)


@pytest.fixture
def connections() -> Iterator[list[RawGrpcConnection]]:
    """Raw HTTP/2 connections a test opens; closed afterwards."""
    opened: list[RawGrpcConnection] = []
    yield opened
    for connection in opened:
        connection.close()


def connect(opened: list[RawGrpcConnection], server: RunningServer, source: str) -> RawGrpcConnection:
    connection = RawGrpcConnection(server.target, source=source)
    opened.append(connection)
    return connection


def quota_failure(stream_or_error: RawStream | grpc.Call) -> list[str]:
    """The subjects of the QuotaFailure sent with a refusal."""
    if isinstance(stream_or_error, RawStream):
        raise TypeError("a raw stream keeps no trailers but grpc-status and grpc-message")
    trailers = dict(stream_or_error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    subjects = []
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            subjects += [v.subject for v in failure.violations]
    return subjects


def held_watch(connection: RawGrpcConnection, member: Member, attachment_id: int) -> RawStream:
    """A WatchAttachment of a PENDING attachment (tagging is off): a stream that stays open."""
    metadata = (("authorization", f"Bearer {member.client.token}"),)
    stream = connection.open_stream(BOARD + "WatchAttachment", metadata)
    request = board_pb2.WatchAttachmentRequest(id=attachment_id).SerializeToString()
    connection.send_partial(stream, framed(request))
    return stream


# --- per address -------------------------------------------------------------------------------------------


def test_two_thousand_half_open_streams_from_one_address_leave_another_address_served(
    processes: Processes, tmp_path: Path
) -> None:
    # The request timeout is long here, so that the attack holds for the whole measurement.
    server = serve(processes, tmp_path, "--request-timeout", "5m")
    member = sign_up(server.target, timeout=GENEROUS)
    with member.client:
        post = member.client.create_post(0, "still served", "while one address opens 2,000 streams")
        abusers = Abusers(
            server.target, idle=20, slow=0, post_id=post.id, source=ATTACKER,
            idle_method=BOARD + "GetPost", streams_per_connection=100,
        )  # fmt: skip
        with abusers:
            settled = lambda: abusers.open_streams() == 64  # noqa: E731
            wait_for("every stream past the 64th to be refused", settled, timeout=60)
            figures = measure_other_client(server.target, [post.id], 300, timeout=GENEROUS)
            assert figures["GetPost"]["p99_ms"] < 1000, figures
            assert figures["Health.Check"]["p99_ms"] < 1000, figures
            # The address's 64 calls are still held: the others were served beside them, not after them.
            assert abusers.open_streams() == 64
            # Refused at once. grpc.aio now and then reports CANCELLED instead, for a call ended before its
            # client half-closed while an interceptor runs (a race inside grpc): refused all the same.
            ended = [s for s in abusers.idle_streams if not s.open]
            codes = Counter(s.grpc_status for s in ended)
            assert set(codes) <= {RESOURCE_EXHAUSTED, CANCELLED}, codes
            assert codes[RESOURCE_EXHAUSTED] > 0.8 * len(ended), codes
            ended = [s for s in ended if s.grpc_status == RESOURCE_EXHAUSTED]
            assert "64 calls are already in progress from this address" in ended[0].grpc_message


def test_a_refused_call_says_whose_quota_and_when_to_retry(
    processes: Processes, tmp_path: Path, connections: list[RawGrpcConnection]
) -> None:
    server = serve(processes, tmp_path, "--max-calls-per-peer", "2", "--request-timeout", "5m")
    member = sign_up(server.target, timeout=GENEROUS)
    with member.client as client:
        post = client.create_post(0, "t", "c")
        held = connect(connections, server, "127.0.0.1")
        streams = [held.open_stream(BOARD + "GetPost") for _ in range(2)]  # two calls of 127.0.0.1 held

        caught: list[ResourceExhaustedError] = []

        def refused() -> bool:
            try:
                client.get_post(post.id)
            except ResourceExhaustedError as exc:
                caught.append(exc)
            return bool(caught)

        wait_for("the held calls to fill 127.0.0.1's share", refused, timeout=GENEROUS)
        assert all(s.open for s in streams)
        assert caught[0].retry_after == 1.0
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as health:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=GENEROUS)
        assert isinstance(health.value, grpc.Call)
        assert health.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert quota_failure(health.value) == ["peer:127.0.0.1"]
        held.reset(streams[0])
        wait_for("a call to get through", lambda: client.get_post(post.id) == post, timeout=GENEROUS)


def _connect_call(server: RunningServer, method: str, body: bytes) -> tuple[int, dict[str, object]]:
    """A Connect unary call (JSON) to the board's HTTP listener: its HTTP status and JSON answer."""
    assert server.web_url is not None
    address = urlsplit(server.web_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=GENEROUS)
    try:
        headers = {"content-type": "application/json"}
        connection.request("POST", f"/board.v1.BoardService/{method}", body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read() or b"{}")
    finally:
        connection.close()


def test_connect_and_grpc_calls_from_one_address_share_its_budget(
    processes: Processes, tmp_path: Path, connections: list[RawGrpcConnection]
) -> None:
    server = serve(processes, tmp_path, "--max-calls-per-peer", "2", "--request-timeout", "5m")
    member = sign_up(server.target, timeout=GENEROUS)
    with member.client as client:
        post = client.create_post(0, "t", "c")
    request = json.dumps({"id": str(post.id)}).encode()
    held = connect(connections, server, "127.0.0.1")
    first = held.open_stream(BOARD + "GetPost")  # one gRPC call of 127.0.0.1 held: a Connect call still fits
    status, answer = _connect_call(server, "GetPost", request)
    assert (status, answer.get("id")) == (200, str(post.id)), answer
    second = held.open_stream(BOARD + "GetPost")  # two: 127.0.0.1's whole share, whatever the transport
    refused = lambda: _connect_call(server, "GetPost", request)[0] == 429  # noqa: E731
    wait_for("the gRPC calls to fill the share the Connect call draws on", refused, timeout=GENEROUS)
    status, answer = _connect_call(server, "GetPost", request)
    assert answer["code"] == "resource_exhausted", answer
    assert "2 calls are already in progress from this address" in str(answer["message"])
    assert first.open and second.open
    held.reset(first)
    served = lambda: _connect_call(server, "GetPost", request)[0] == 200  # noqa: E731
    wait_for("a Connect call to get through once a gRPC call ended", served, timeout=GENEROUS)


def test_a_connect_request_over_the_message_limit_is_resource_exhausted(
    processes: Processes, tmp_path: Path
) -> None:
    server = serve(processes, tmp_path)
    member = sign_up(server.target, timeout=GENEROUS)
    with member.client as client:
        client.create_post(0, "t", "c")
    too_large = json.dumps({"title": "t", "content": "x" * (2 * 1024 * 1024)}).encode()
    status, answer = _connect_call(server, "CreatePost", too_large)
    assert answer.get("code") == "resource_exhausted", (status, answer)


@pytest.mark.parametrize("upload", [False, True], ids=["connect", "upload"])
def test_an_http_body_that_does_not_arrive_in_time_is_deadline_exceeded(
    processes: Processes, tmp_path: Path, upload: bool
) -> None:
    server = serve(processes, tmp_path, "--request-timeout", "1s")
    assert server.web_url is not None
    path, authorization = "/board.v1.BoardService/GetPost", ""
    if upload:
        member = sign_up(server.target, timeout=GENEROUS)
        with member.client as client:
            post = client.create_post(0, "t", "c")
            path, authorization = f"/v1/posts/{post.id}/attachments", f"Bearer {client.token}"
    address = urlsplit(server.web_url)
    with socket.create_connection((address.hostname or "", address.port or 0), timeout=GENEROUS) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: board\r\nContent-Type: application/json\r\n"
            + (f"Authorization: {authorization}\r\n" if authorization else "")
            + "Content-Length: 1000\r\n\r\n{"
        )
        sock.sendall(head.encode())  # 1 of 1,000 bytes, then nothing
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    waited = time.monotonic() - started
    status_line, _, rest = answer.partition(b"\r\n")
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert status_line.split()[1] == b"504", answer
    assert body["code"] == "deadline_exceeded", body
    assert "did not arrive within 1 s" in body["message"]
    assert 0.8 < waited < 10, waited


def test_with_client_limits_off_nothing_is_counted_and_the_board_serves_as_before(
    processes: Processes, tmp_path: Path, connections: list[RawGrpcConnection]
) -> None:
    # What the board bench compares against to measure what the limits cost.
    server = serve(processes, tmp_path, "--client-limits", "off", "--max-calls-per-peer", "1")
    member = sign_up(server.target, timeout=GENEROUS)
    with member.client as client:
        post = client.create_post(0, "t", "c")
        held = connect(connections, server, "127.0.0.1")
        streams = [held.open_stream(BOARD + "GetPost") for _ in range(3)]
        for _ in range(5):
            assert client.get_post(post.id) == post
        assert client.upload_attachment(post.id, "a.png", tiny_png()).size_bytes == len(tiny_png())
        held.wait(lambda: False, 0.5)
        assert all(s.open for s in streams)


# --- per user ----------------------------------------------------------------------------------------------


def test_a_user_has_at_most_the_cap_in_progress_from_any_number_of_addresses(
    processes: Processes, tmp_path: Path, connections: list[RawGrpcConnection]
) -> None:
    server = serve(processes, tmp_path, "--max-calls-per-peer", "4")
    member, other = (sign_up(server.target, name, timeout=GENEROUS) for name in ("Busy", "Other"))
    with member.client as client, other.client:
        post = client.create_post(0, "watched", "by four streams")
        attachment = client.add_attachment(post.id, "a.png", tiny_png())
        streams = [
            held_watch(connect(connections, server, source), member, attachment.id)
            for source in (ATTACKER, ATTACKER, OTHER_ATTACKER, PROXY)
        ]
        for connection, stream in zip(connections, streams, strict=True):
            # Each watch has sent the attachment's state: admitted, and counted.
            assert connection.wait(lambda: stream.received > 0, GENEROUS)  # noqa: B023
        assert all(s.open for s in streams)
        # Four streams of the user from three addresses: each address is under its cap, the user is at it.
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as caught:
            get_post = channel.unary_unary(
                BOARD + "GetPost",
                request_serializer=board_pb2.GetPostRequest.SerializeToString,
                response_deserializer=board_pb2.Post.FromString,
            )
            get_post(board_pb2.GetPostRequest(id=post.id), metadata=client.metadata, timeout=GENEROUS)
        assert isinstance(caught.value, grpc.Call)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert quota_failure(caught.value) == [f"user:{member.id}"]
        assert "from this user" in (caught.value.details() or "")
        # Anyone else, from the same address as the refused call, is served; so are anonymous reads.
        assert other.client.get_post(post.id) == post
        with server.client() as anonymous:
            assert anonymous.get_post(post.id) == post
        connections[0].reset(streams[0])
        wait_for("the user's call to get through", lambda: client.get_post(post.id) == post, GENEROUS)


# --- request timeout ---------------------------------------------------------------------------------------


def test_a_stalled_request_is_ended_after_the_request_timeout(
    processes: Processes, tmp_path: Path, connections: list[RawGrpcConnection]
) -> None:
    server = serve(processes, tmp_path, "--request-timeout", "1s")
    member = sign_up(server.target, timeout=GENEROUS)
    with member.client as client:
        post = client.create_post(0, "t", "c")
        connection = connect(connections, server, ATTACKER)
        metadata = (("authorization", f"Bearer {client.token}"),)
        headers_only = connection.open_stream(BOARD + "GetPost")
        half_a_message = connection.open_stream(BOARD + "CreatePost", metadata)
        request = board_pb2.CreatePostRequest(title="t", content="x" * 500).SerializeToString()
        connection.send_partial(half_a_message, framed(request)[:200])
        stalled_upload = connection.open_stream(BOARD + "UploadAttachment", metadata)
        connection.send_partial(stalled_upload, half_sent_upload(post.id))
        reflection = connection.open_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        stalled = (headers_only, half_a_message, stalled_upload, reflection)
        started = time.monotonic()
        assert connection.wait(lambda: not any(s.open for s in stalled), timeout=GENEROUS)
        assert time.monotonic() - started < 5
        for stream in stalled:
            assert stream.grpc_status == DEADLINE_EXCEEDED, stream
        assert "did not arrive within 1 s" in headers_only.grpc_message
        assert not connection.closed and connection.goaway is None  # the calls end, not the connection
        assert client.get_post(post.id) == post  # whole requests are served as before
        assert client.list_posts().posts


def test_an_upload_that_keeps_coming_is_not_cut_off_by_the_request_timeout(
    processes: Processes, tmp_path: Path
) -> None:
    server = serve(processes, tmp_path, "--request-timeout", "1s")
    member = sign_up(server.target, timeout=GENEROUS)
    with member.client as client:
        post = client.create_post(0, "slow", "but steady")
        data = tiny_png()

        def steady() -> Iterator[board_pb2.UploadAttachmentRequest]:
            metadata = board_pb2.UploadAttachmentMetadata(
                post_id=post.id, filename="s.png", size_bytes=len(data)
            )
            yield board_pb2.UploadAttachmentRequest(metadata=metadata)
            for i in range(4):  # 2 s in all, each message within the second
                time.sleep(0.5)
                yield board_pb2.UploadAttachmentRequest(
                    chunk=data[i * len(data) // 4 : (i + 1) * len(data) // 4]
                )

        with grpc.insecure_channel(server.target) as channel:
            upload = channel.stream_unary(
                BOARD + "UploadAttachment",
                request_serializer=board_pb2.UploadAttachmentRequest.SerializeToString,
                response_deserializer=board_pb2.Attachment.FromString,
            )
            added = upload(steady(), metadata=client.metadata, timeout=GENEROUS)
        assert added.size_bytes == len(data)


# --- who the peer is ---------------------------------------------------------------------------------------


def test_x_forwarded_for_counts_the_client_behind_a_trusted_proxy_and_is_ignored_from_anyone_else(
    processes: Processes, tmp_path: Path, connections: list[RawGrpcConnection]
) -> None:
    server = serve(
        processes, tmp_path, "--max-calls-per-peer", "2", "--request-timeout", "5m",
        "--trusted-proxies", f"{PROXY}/32",
    )  # fmt: skip
    proxy = connect(connections, server, PROXY)
    stranger = connect(connections, server, ATTACKER)

    def held(connection: RawGrpcConnection, forwarded: str) -> RawStream:
        return connection.open_stream(BOARD + "GetPost", (("x-forwarded-for", forwarded),))

    def settle() -> None:
        for connection in connections:
            connection.wait(lambda: all(s.grpc_status for s in (third, forged, spoofed)), 1.0)

    # Through the proxy: two calls of 203.0.113.7 (its own header said 198.51.100.1: the proxy appended the
    # real address, and only the right-most address the proxy vouches for counts).
    first = [held(proxy, "198.51.100.1, 203.0.113.7"), held(proxy, "203.0.113.7")]
    third = held(proxy, "203.0.113.7")
    someone_else = held(proxy, "203.0.113.8")
    forged = held(proxy, "203.0.113.7, 127.0.0.4")  # a trusted hop on the right is skipped: still .7
    # From an address that is not a trusted proxy the header is ignored: it is 127.0.0.2 that counts.
    direct = [held(stranger, "203.0.113.50"), held(stranger, "203.0.113.51")]
    spoofed = held(stranger, "203.0.113.52")
    settle()
    assert all(s.open for s in (*first, someone_else, *direct))
    for refused in (third, forged, spoofed):
        assert refused.grpc_status in (RESOURCE_EXHAUSTED, CANCELLED), refused  # see the first test
    # The proxy's own calls (no header) are its own peer's, apart from its clients'.
    own = [proxy.open_stream(BOARD + "GetPost") for _ in range(3)]
    assert proxy.wait(lambda: own[2].grpc_status is not None, GENEROUS)
    assert [s.open for s in own] == [True, True, False]


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("ipv4:10.0.0.9:5000", "203.0.113.7", (), "10.0.0.9"),  # no proxy trusted: the header is ignored
        ("ipv4:10.0.0.9:5000", "203.0.113.7", ("192.0.2.0/24",), "10.0.0.9"),  # not from the proxy
        ("ipv4:192.0.2.1:5000", "203.0.113.7", ("192.0.2.0/24",), "203.0.113.7"),
        ("ipv4:192.0.2.1:5000", "1.1.1.1, 203.0.113.7, 192.0.2.5", ("192.0.2.0/24",), "203.0.113.7"),
        ("ipv4:192.0.2.1:5000", "not-an-address", ("192.0.2.0/24",), "192.0.2.1"),
        ("ipv4:192.0.2.1:5000", "192.0.2.9, 192.0.2.5", ("192.0.2.0/24",), "192.0.2.9"),  # all trusted
        ("ipv4:192.0.2.1:5000", "", ("192.0.2.0/24",), "192.0.2.1"),  # a proxy's own call
        ("ipv6:[2001:db8::1]:443", "[2001:db8:1::7]:9999", ("2001:db8::/64",), "2001:db8:1::7"),
        ("unix:/run/board.sock", "203.0.113.7", ("192.0.2.0/24",), "unix:/run/board.sock"),
    ],
)
def test_the_peer_is_the_address_a_trusted_proxy_vouches_for(
    peer: str, forwarded: str, trusted: tuple[str, ...], expected: str
) -> None:
    assert PeerIdentity(trusted).identify(peer_address(peer), [forwarded] if forwarded else []) == expected


def test_ipv6_peers_are_counted_per_slash_64() -> None:
    assert peer_key("2001:db8:1:2:aaaa::1") == peer_key("2001:db8:1:2:bbbb::9") == "peer:2001:db8:1:2::/64"
    assert peer_key("2001:db8:1:3::1") != peer_key("2001:db8:1:2::1")
    assert peer_key("127.0.0.2") == "peer:127.0.0.2" and peer_key("") == "peer:unknown"
