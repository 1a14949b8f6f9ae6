"""The board's HTTP listener as a browser meets it: security headers on every answer, CORS only for the
configured origins, the session cookie (HttpOnly, SameSite=Strict; never spent by another origin), the raw
photo upload (authenticated and size-checked before its body is read), the web app's files, /healthz, and
metrics that name the protocol of each call."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]

from tests.board.conftest import PASSWORD, Member, RunningServer, start_board_server, tiny_png
from tests.board.prometheus import sample
from tests.support import Processes

ORIGIN = "https://app.example.org"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict[str, object]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


@pytest.fixture(scope="module")
def server(module_processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    workdir = tmp_path_factory.mktemp("http")
    web_root = workdir / "web"
    (web_root / "assets").mkdir(parents=True)
    (web_root / "index.html").write_text("<!doctype html><title>Board</title>")
    (web_root / "assets" / "app-1a2b.js").write_text("console.log('board');" * 50)
    return start_board_server(
        module_processes,
        f"sqlite:///{workdir / 'board.db'}",
        workdir,
        extra=("--cors-origin", ORIGIN, "--web-root", str(web_root), "--max-attachment-bytes", "100000"),
    )


@pytest.fixture
def member(server: RunningServer) -> Iterator[Member]:
    made = server.sign_up("Browser")
    yield made
    made.client.close()


def request(
    server: RunningServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    assert server.web_url is not None
    address = urlsplit(server.web_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return Answer(answer.status, answer.headers, answer.read())
    finally:
        connection.close()


def connect(
    server: RunningServer, method: str, message: dict[str, object], headers: dict[str, str] | None = None
) -> Answer:
    body = json.dumps(message).encode()
    sent = {"content-type": "application/json", **(headers or {})}
    return request(server, "POST", f"/board.v1.BoardService/{method}", body, sent)


def own_origin(server: RunningServer) -> str:
    assert server.web_url is not None
    return server.web_url


def test_every_answer_carries_the_security_headers(server: RunningServer) -> None:
    for answer in (
        request(server, "GET", "/"),
        request(server, "GET", "/nothing-here"),
        connect(server, "GetPost", {"id": 424242}),
    ):
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"


def test_the_web_app_is_served_with_hashed_assets_immutable_and_gzipped(server: RunningServer) -> None:
    page = request(server, "GET", "/")
    assert page.status == 200 and b"<title>Board</title>" in page.body
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    asset = request(server, "GET", "/assets/app-1a2b.js", headers={"accept-encoding": "gzip"})
    assert asset.status == 200 and asset.headers["content-encoding"] == "gzip"
    assert "immutable" in asset.headers["cache-control"]
    assert request(server, "GET", "/../board.db").status == 404
    assert request(server, "GET", "/%2e%2e/board.db").status == 404


def test_cors_answers_only_the_configured_origin_and_never_with_credentials(server: RunningServer) -> None:
    preflight = {"origin": ORIGIN, "access-control-request-method": "POST"}
    allowed = request(server, "OPTIONS", "/board.v1.BoardService/GetPost", headers=preflight)
    assert allowed.status == 204
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    refused = request(
        server,
        "OPTIONS",
        "/board.v1.BoardService/GetPost",
        headers={**preflight, "origin": "https://evil.example"},
    )
    assert refused.status == 403 and "access-control-allow-origin" not in refused.headers
    answer = connect(server, "GetPost", {"id": 424242}, {"origin": ORIGIN})
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-credentials" not in answer.headers
    other = connect(server, "GetPost", {"id": 424242}, {"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def _session_cookie(answer: Answer) -> str:
    cookies = answer.headers.get_all("set-cookie") or []
    assert len(cookies) == 1, cookies
    return cookies[0]


def test_sign_in_for_a_browser_sets_an_httponly_strict_cookie_and_hides_the_token(
    server: RunningServer, member: Member
) -> None:
    signed_in = connect(
        server, "SignIn", {"email": member.email, "password": PASSWORD}, {"board-session": "cookie"}
    )
    assert signed_in.status == 200
    assert "accessToken" not in signed_in.json()  # the page never holds the token
    cookie = _session_cookie(signed_in)
    attributes = [part.strip() for part in cookie.split(";")]
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes)
    assert "Secure" not in attributes  # plain HTTP on loopback; with TLS the cookie is Secure
    session = attributes[0]
    # The cookie alone authenticates a call from this origin...
    me = connect(server, "GetUser", {"id": 0}, {"cookie": session, "origin": own_origin(server)})
    assert me.status == 200 and me.json()["id"] == str(member.id)
    # ...but never one sent by a page of another origin, even on the same host.
    elsewhere = connect(server, "GetUser", {"id": 0}, {"cookie": session, "origin": "http://127.0.0.1:1"})
    assert elsewhere.status == 401
    # Without the header, SignIn answers as over gRPC: the token, and no cookie.
    plain = connect(server, "SignIn", {"email": member.email, "password": PASSWORD})
    assert plain.json()["accessToken"] and "set-cookie" not in plain.headers
    # SignOut ends the session and clears the cookie; the old cookie is then refused and dropped.
    out = connect(server, "SignOut", {}, {"cookie": session, "origin": own_origin(server)})
    assert out.status == 200 and "Max-Age=0" in _session_cookie(out)
    stale = connect(server, "GetUser", {"id": 0}, {"cookie": session, "origin": own_origin(server)})
    assert stale.status == 401 and "Max-Age=0" in _session_cookie(stale)


def upload(server: RunningServer, post_id: int, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    sent = {"content-type": "image/png", **(headers or {})}
    return request(server, "POST", f"/v1/posts/{post_id}/attachments?filename=red%20dot.png", body, sent)


def test_an_upload_stores_a_pending_attachment_through_the_same_use_case(
    server: RunningServer, member: Member
) -> None:
    post = member.client.create_post(0, "upload", "from the browser")
    answer = upload(server, post.id, tiny_png(), {"authorization": f"Bearer {member.client.token}"})
    assert answer.status == 200, answer.body
    made = answer.json()
    assert made["filename"] == "red dot.png" and made["status"] == "ATTACHMENT_STATUS_PENDING"
    stored = member.client.get_attachment(int(str(made["id"])))
    assert stored.post_id == post.id and stored.content_type == "image/png"


def test_an_upload_is_refused_before_its_body_is_read(server: RunningServer, member: Member) -> None:
    """Anonymous, or declaring more than the limit: answered at once, while the body has not been sent."""
    post = member.client.create_post(0, "upload", "refused")
    assert server.web_url is not None
    address = urlsplit(server.web_url)
    for headers, code, status in (
        ({}, "unauthenticated", 401),
        ({"authorization": f"Bearer {member.client.token}"}, "invalid_argument", 400),
    ):
        with socket.create_connection((address.hostname or "", address.port or 0), timeout=30) as sock:
            lines = [
                f"POST /v1/posts/{post.id}/attachments?filename=big.png HTTP/1.1",
                f"Host: {address.netloc}",
                "Content-Type: image/png",
                "Content-Length: 5000000",  # over --max-attachment-bytes 100000; no byte of it is sent
                *(f"{k}: {v}" for k, v in headers.items()),
            ]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            answer = http.client.HTTPResponse(sock)
            answer.begin()
            assert answer.status == status
            error = json.loads(answer.read())
            assert error["code"] == code
    too_big = upload(server, post.id, b"x" * 100_001, {"authorization": f"Bearer {member.client.token}"})
    details = too_big.json()["details"]
    assert isinstance(details, list) and details[0]["type"] == "google.rpc.BadRequest"
    bad_request = error_details_pb2.BadRequest.FromString(base64.b64decode(details[0]["value"] + "=="))
    assert [v.field for v in bad_request.field_violations] == ["data"]
    assert "at most 100000 bytes" in bad_request.field_violations[0].description


def test_health_answers_serving(server: RunningServer) -> None:
    answer = request(server, "GET", "/healthz")
    assert (answer.status, answer.body) == (200, b"SERVING\n")


def test_metrics_name_the_protocol_of_each_call(server: RunningServer, member: Member) -> None:
    connect(server, "GetPost", {"id": 777001})
    member.client.get_user(member.id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        over_connect = sample(server, "grpc_server_handled_total", grpc_method="GetPost", protocol="connect")
        over_grpc = sample(server, "grpc_server_handled_total", grpc_method="GetUser", protocol="grpc")
        if over_connect >= 1 and over_grpc >= 1:
            break
        time.sleep(0.2)
    assert (
        sample(
            server,
            "grpc_server_handled_total",
            grpc_method="GetPost",
            protocol="connect",
            grpc_code="NOT_FOUND",
        )
        >= 1
    )
    assert sample(server, "grpc_server_handled_total", grpc_method="GetUser", protocol="grpc") >= 1


def test_the_listener_is_off_with_an_empty_address(processes: Processes, tmp_path: Path) -> None:
    server = start_board_server(
        processes, f"sqlite:///{tmp_path / 'off.db'}", tmp_path, extra=("--http-address", "")
    )
    assert server.web_url is None and "web app and Connect on" not in server.log()
