"""The board's HTTP listener (``--http-address``): board.v1 over Connect and gRPC-Web for browsers, the photo
upload, the web app's files and a health answer, in the same process (and on the same event loop) as the
gRPC server, so that both transports share the use cases, the watch hub and the tagging worker's wake-ups.

Every answer carries the security headers (a Content-Security-Policy that allows only this origin,
``X-Content-Type-Options: nosniff``, frame denial, no referrer). Cross-origin calls are answered only for the
origins of ``--cors-origin`` (none by default), and never with credentials: a page of another origin
authenticates with an ``authorization`` header, never with the session cookie (api/web_session.py).

Served by uvicorn over HTTP/1.1; several processes share the port as they share the gRPC port
(SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import mimetypes
import socket
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import grpc
import uvicorn

from board_server.api import uploads, web_session
from board_server.api.calls import CallGuard, CallObserver, plain_status, record_http_peer
from board_server.api.connect import SERVICE, connect_application
from board_server.api.limits import ClientLimits, RequestTimedOut
from board_server.api.servicer import BoardServicer
from board_server.domain.accounts import Accounts
from board_server.domain.board import Board

logger = logging.getLogger(__name__)

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]
CONNECT_PREFIX = "/board.v1.BoardService/"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
# What a cross-origin page may send and read (Connect, gRPC-Web, tracing).
_CORS_REQUEST_HEADERS = (
    "authorization, content-type, connect-protocol-version, connect-timeout-ms, grpc-timeout, "
    "x-grpc-web, x-user-agent, traceparent"
)
_CORS_EXPOSED_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin"
_COMPRESSIBLE = frozenset({"application/javascript", "application/json", "image/svg+xml"})


class HttpSettings(Protocol):
    """What the HTTP listener reads of the settings (runtime/config.py's Settings has all of it)."""

    @property
    def cors_origins(self) -> tuple[str, ...]: ...
    @property
    def web_root(self) -> Path: ...
    @property
    def call_timeout_s(self) -> float: ...
    @property
    def max_concurrent_rpcs(self) -> int: ...
    @property
    def grpc_receive_limit(self) -> int: ...
    @property
    def token_lifetime_s(self) -> float: ...
    @property
    def grace_seconds(self) -> float: ...
    @property
    def tls(self) -> bool: ...
    @property
    def tls_cert_file(self) -> Path | None: ...
    @property
    def tls_key_file(self) -> Path | None: ...


@dataclass(frozen=True)
class _File:
    body: bytes
    gzipped: bytes | None
    content_type: str
    cache_control: bytes


class WebApp:
    """The built web app's files (clients/web/dist), read once; text files also kept gzipped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[str, _File] = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(root).as_posix()
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            body = path.read_bytes()
            compressible = kind.startswith("text/") or kind in _COMPRESSIBLE
            content_type = f"{kind}; charset=utf-8" if kind.startswith("text/") else kind
            # Vite names every asset by its content hash: those never change; the page itself may.
            immutable = relative.startswith("assets/")
            self._files[relative] = _File(
                body,
                gzip.compress(body, mtime=0) if compressible else None,
                content_type,
                b"public, max-age=31536000, immutable" if immutable else b"no-cache",
            )

    def find(self, path: str) -> _File | None:
        relative = path.lstrip("/") or "index.html"
        return self._files.get(relative)


# Headers that may come several times, and how their values are joined (the last hop's address last).
_JOINED = {"cookie": "; ", "x-forwarded-for": ", "}


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        if name in found and name in _JOINED:
            text = f"{found[name]}{_JOINED[name]}{text}"
        found[name] = text
    return found


class BoardHttpApp:
    """The ASGI application of the HTTP listener (see the module docstring)."""

    def __init__(
        self,
        connect: ASGIApp,
        upload: uploads.UploadEndpoint,
        web_app: WebApp | None,
        *,
        cors_origins: Iterable[str] = (),
        secure_cookie: bool = False,
        serving: Callable[[], bool] = lambda: True,
        request_timeout_s: float | None = None,
    ) -> None:
        self._connect = connect
        self._request_timeout = request_timeout_s
        self._secure = secure_cookie
        self._upload = upload
        self._web_app = web_app
        self._cors = frozenset(cors_origins)
        self._serving = serving

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return  # no lifespan events to answer, no websockets
        headers = _headers(scope)
        origin = headers.get("origin")
        cors = origin if origin is not None and origin in self._cors else None
        send = self._decorated(send, cors, headers)
        path, method = scope["path"], scope["method"]
        if method == "OPTIONS":
            await self._preflight(send, cors, headers)
            return
        credentials = web_session.credentials(headers)
        if credentials.from_cookie and credentials.authorization is not None:
            # The cookie stands for the authorization header from here on (Connect reads that one).
            headers["authorization"] = credentials.authorization
            scope = {
                **scope,
                "headers": [*scope["headers"], (b"authorization", credentials.authorization.encode())],
            }
        if path.startswith(CONNECT_PREFIX):
            record_http_peer(scope)
            await self._connect(scope, *self._body_within(receive, send, every=False))
        elif uploads.PATH.match(path):
            if method != "POST":
                await _plain(send, 405, b"use POST\n", [(b"allow", b"POST")])
            else:
                await self._upload(scope, *self._body_within(receive, send, every=True), headers)
        elif path == "/healthz":
            serving = self._serving()
            await _plain(send, 200 if serving else 503, b"SERVING\n" if serving else b"NOT_SERVING\n")
        elif method in ("GET", "HEAD"):
            await self._static(send, path, method, headers)
        else:
            await _plain(send, 404, b"not found\n")

    def _body_within(
        self, receive: ASGIReceive, send: ASGISend, *, every: bool
    ) -> tuple[ASGIReceive, ASGISend]:
        """``receive`` and ``send`` of a request whose body must arrive within the request timeout (of the
        request's start; ``every``: each piece within it of the one before, as an upload's messages over
        gRPC). Past it the caller is answered DEADLINE_EXCEEDED (Connect's JSON error) and the application
        sees the client gone; what it sends after that is dropped."""
        timeout_s = self._request_timeout
        if timeout_s is None:
            return receive, send
        loop = asyncio.get_running_loop()
        state = {"ends": loop.time() + timeout_s, "arrived": False, "started": False, "answered": False}

        async def timed_receive() -> dict[str, Any]:
            if state["arrived"]:
                return await receive()
            try:
                async with asyncio.timeout_at(float(state["ends"])):
                    message = await receive()
            except TimeoutError:
                if not state["started"]:
                    status, body = uploads.error_body(
                        plain_status(grpc.StatusCode.DEADLINE_EXCEEDED, str(RequestTimedOut(timeout_s)))
                    )
                    await uploads.respond(send, status, body)
                    state["answered"] = True
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["arrived"] = True
            elif every:
                state["ends"] = loop.time() + timeout_s
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["answered"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        return timed_receive, guarded_send

    def _decorated(self, send: ASGISend, cors: str | None, headers: Mapping[str, str]) -> ASGISend:
        """``send`` with the security headers (and CORS ones) on the answer's start."""
        stale_cookie = web_session.COOKIE in headers.get("cookie", "") and "authorization" not in headers

        async def decorated(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = list(SECURITY_HEADERS)
                if cors is not None:
                    extra += [
                        (b"access-control-allow-origin", cors.encode()),
                        (b"access-control-expose-headers", _CORS_EXPOSED_HEADERS.encode()),
                        (b"vary", b"Origin"),
                    ]
                if stale_cookie and message["status"] == 401:
                    # A cookie whose session ended: drop it, so that the next call is anonymous.
                    extra.append((b"set-cookie", web_session.cleared_cookie(secure=self._secure).encode()))
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        return decorated

    async def _preflight(self, send: ASGISend, cors: str | None, headers: Mapping[str, str]) -> None:
        if cors is None or headers.get("access-control-request-method") not in ("POST", "GET"):
            await _plain(send, 403, b"cross-origin request refused\n")
            return
        answer = [
            (b"access-control-allow-methods", b"POST, GET"),
            (b"access-control-allow-headers", _CORS_REQUEST_HEADERS.encode()),
            (b"access-control-max-age", b"7200"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": answer})
        await send({"type": "http.response.body", "body": b""})

    async def _static(self, send: ASGISend, path: str, method: str, headers: Mapping[str, str]) -> None:
        found = self._web_app.find(path) if self._web_app is not None else None
        if found is None:
            text = b"not found\n" if self._web_app is not None else b"the web app is not built: make web\n"
            await _plain(send, 404, text)
            return
        body, encoding = found.body, []
        if found.gzipped is not None and "gzip" in headers.get("accept-encoding", ""):
            body, encoding = found.gzipped, [(b"content-encoding", b"gzip")]
        answer = [
            (b"content-type", found.content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", found.cache_control),
            (b"vary", b"Accept-Encoding"),
            *encoding,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": answer})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


async def _plain(
    send: ASGISend, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    answer = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*answer, *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class _Server(uvicorn.Server):
    """uvicorn inside the board's own event loop: the board, not uvicorn, handles the stop signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        yield


@dataclass
class HttpServer:
    """A started HTTP listener: its port, and how to stop it."""

    port: int
    _server: _Server
    _task: asyncio.Task[None]

    async def stop(self, grace: float) -> None:
        """Stop accepting, let answers in progress finish for up to ``grace`` seconds, then close."""
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace + 5.0)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _listening_socket(address: str, *, reuse_port: bool) -> socket.socket:
    host, port = address.rsplit(":", 1)
    family, kind, proto, _, bound = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(bound)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"could not bind the HTTP listener to {address}: {exc}") from exc
    sock.setblocking(False)
    return sock


def board_http_app(
    board: Board,
    accounts: Accounts,
    settings: HttpSettings,
    *,
    limits: ClientLimits,
    observers: Sequence[CallObserver] = (),
    serving: Callable[[], bool] = lambda: True,
) -> BoardHttpApp:
    """The HTTP listener's application over the board's use cases: Connect and gRPC-Web through the
    servicer, the upload, the web app of ``settings.web_root`` when it is built."""
    connect = connect_application(
        BoardServicer(board),
        accounts,
        call_timeout_s=settings.call_timeout_s,
        limits=limits,
        max_in_flight=settings.max_concurrent_rpcs,
        read_max_bytes=settings.grpc_receive_limit,
        session_max_age_s=int(settings.token_lifetime_s),
        secure_cookie=settings.tls,
        observers=observers,
    )
    guard = CallGuard(
        SERVICE.full_name,
        accounts,
        call_timeout_s=settings.call_timeout_s,
        observers=observers,
        max_in_flight=settings.max_concurrent_rpcs,
        traced=True,
        limits=limits,
    )
    web_app = WebApp(settings.web_root) if (settings.web_root / "index.html").is_file() else None
    if web_app is None:
        logger.warning("the web app is not built (no %s): `make web` builds it", settings.web_root)
    return BoardHttpApp(
        cast(ASGIApp, connect),
        uploads.UploadEndpoint(board, guard),
        web_app,
        cors_origins=settings.cors_origins,
        secure_cookie=settings.tls,
        serving=serving,
        request_timeout_s=limits.limits.request_timeout_s if limits.enabled else None,
    )


async def start_http(
    app: BoardHttpApp, settings: HttpSettings, *, address: str, reuse_port: bool
) -> HttpServer:
    """Serve ``app`` on ``address`` (TLS with the settings' certificate); return once it accepts. Raises
    RuntimeError if the address cannot be bound."""
    grace_s = settings.grace_seconds
    sock = _listening_socket(address, reuse_port=reuse_port)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, int(grace_s)),
        ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
        ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
    )
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # the board logs its own start and stop
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    while not server.started:
        if task.done():
            sock.close()
            error = task.exception()
            raise RuntimeError(f"the HTTP listener on {address} did not start: {error}")
        await asyncio.sleep(0.01)
    return HttpServer(int(sock.getsockname()[1]), server, task)
