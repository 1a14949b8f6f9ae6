"""Wiring of one board server process: database, services, servicer, interceptor, health and reflection.

The server is grpc.aio: every call is a coroutine on one event loop, so idle streams and slow uploads cost
memory, not threads, and nobody waits for a thread pool to free up. Abuse limits are gRPC's own: at most
``max_concurrent_rpcs`` calls in progress (RESOURCE_EXHAUSTED beyond), ``max_streams_per_connection`` per
connection, keepalive pings that find dead peers and refuse clients that ping too often, idle connections
closed and old ones asked to reconnect, and a server-side deadline per call (board_server/interceptors.py).
Several such processes can share the port (board_server/processes.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from board_server import tracing
from board_server.accounts import Accounts
from board_server.attachments import AttachmentService
from board_server.config import Settings
from board_server.database import Database, open_database
from board_server.errors import BoardError
from board_server.interceptors import BoardInterceptor
from board_server.metrics import BoardMetrics
from board_server.paging import load_page_tokens
from board_server.retag import Retagging
from board_server.served_model import ServedModels
from board_server.service import Board
from board_server.servicer import BoardServicer
from board_server.tagging import TaggingWorker, build_tagging_worker, make_segment_client
from clients.gen.board.v1 import board_pb2, board_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = board_pb2.DESCRIPTOR.services_by_name["BoardService"].full_name
HOUSEKEEPING_INTERVAL_S = 600.0


def server_options(settings: Settings, *, reuse_port: bool = False) -> list[tuple[str, Any]]:
    """Channel arguments of the board server: message limits, stream caps, keepalive and its enforcement,
    connection idle and age limits (bench/board.py's floor keeps gRPC's defaults; see its docstring)."""
    ms = 1000
    return [
        # Large enough for an attachment of max_attachment_bytes plus the rest of the message.
        ("grpc.max_receive_message_length", settings.grpc_message_limit),
        ("grpc.max_send_message_length", settings.grpc_message_limit),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        # Find peers that vanished without closing (a pulled cable keeps a TCP connection forever).
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * ms)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * ms)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Keepalive enforcement: a client pinging more often than this gets GOAWAY after two strikes.
        ("grpc.http2.min_ping_interval_without_data_ms", int(settings.min_client_ping_interval_s * ms)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", int(settings.max_connection_idle_s * ms)),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * ms)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * ms)),
    ]


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the PEM files of the settings; None for plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    key, chain = settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes()
    return grpc.ssl_server_credentials([(key, chain)])


@dataclass
class BoardServer:
    """A started board server process and what has to be released when it stops."""

    server: grpc.aio.Server
    port: int
    database: Database
    health: health_aio.HealthServicer
    accounts: Accounts
    attachments: AttachmentService
    tagger: TaggingWorker | None = None
    metrics: BoardMetrics | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish for up to ``grace`` seconds, release everything."""
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        await self.server.stop(grace)
        await self.attachments.watchers.close()
        if self.tagger is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.tagger.stop, grace)
        self.accounts.close()
        self.database.dispose()


async def watch_database(
    database: Database,
    health: health_aio.HealthServicer,
    interval_s: float,
    refresh_gauges: Callable[[], None] | None = None,
) -> None:
    """Keep grpc.health.v1 truthful: NOT_SERVING while the database cannot be reached, SERVING once it can.

    Also refreshes the process's sampled gauges (connections in use, watchers) at the same pace.
    """
    serving: bool | None = None
    while True:
        if refresh_gauges is not None:
            refresh_gauges()
        try:
            async with asyncio.timeout(max(interval_s, 1.0) + 5.0):
                await database.run_read(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
            ok = True
        except Exception as exc:
            ok = False
            if serving is not False:
                logger.error("database unreachable: %s; health is NOT_SERVING", type(exc).__name__)
        if ok != serving:
            status = (
                health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", SERVICE_NAME):
                await health.set(name, status)
            if ok and serving is False:
                logger.info("database reachable again; health is SERVING")
            serving = ok
        await asyncio.sleep(interval_s)


async def keep_house(accounts: Accounts, interval_s: float) -> None:
    """Sweep expired sessions and stale sign-in failures now and then (every process: the deletes are
    idempotent, and cheap when there is nothing to delete)."""
    while True:
        try:
            await accounts.housekeeping()
        except Exception:  # the database may be away; the health check reports that
            logger.warning("housekeeping failed; trying again later", exc_info=True)
        await asyncio.sleep(interval_s)


async def learn_served_model(retagging: Retagging, retry_s: float = 30.0) -> None:
    """Ask TorchServe once which model (and classes) it serves, so filters know the served classes; retried
    until TorchServe answers (it may start after the board)."""
    while True:
        try:
            model = await retagging.refresh()
        except BoardError:
            await asyncio.sleep(retry_s)
            continue
        logger.info(
            "TorchServe serves %s (%s), %d classes", model.arch, model.weights, len(model.class_names)
        )
        return


def _refresh_gauges(metrics: BoardMetrics, database: Database, attachments: AttachmentService) -> None:
    metrics.connections_in_use.set(database.engine.pool.checkedout())  # type: ignore[attr-defined]
    metrics.watchers.set(attachments.watchers.watcher_count)


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket: picks port 0's number for every process, keeps it ours."""
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


async def create_server(
    settings: Settings,
    *,
    port: int | None = None,
    tagging_threads: int | None = None,
    metrics: BoardMetrics | None = None,
) -> BoardServer:
    """Open the (already migrated) database, build the aio server, bind and start it; return it.

    ``port`` overrides the port of ``settings.address`` (processes sharing one port pass it, with
    SO_REUSEPORT); ``tagging_threads`` overrides ``settings.tagging_workers`` (0: no tagging here);
    ``metrics`` records calls, tagging and commits. Raises RuntimeError if the address cannot be bound.
    """
    database = open_database(settings)
    if metrics is not None and database.writer is not None:
        database.writer.on_batch = metrics.committed
    try:
        tokens = load_page_tokens(database)
        accounts = Accounts(
            database,
            auth=settings.auth,
            reads_need_sign_in=settings.reads_need_sign_in,
            token_lifetime=timedelta(seconds=settings.token_lifetime_s),
        )
    except BaseException:
        database.dispose()
        raise
    models = ServedModels(database, settings.segmentation_model)
    attachments = AttachmentService(
        database,
        accounts,
        tokens,
        models=models,
        max_bytes=settings.max_attachment_bytes,
        max_per_post=settings.max_attachments_per_post,
        watch_poll_s=settings.watch_poll_s,
    )
    threads = settings.tagging_workers if tagging_threads is None else tagging_threads
    tagger = None
    if threads:
        # Uploads wake the worker at once; the worker's stored outcomes wake this process's watchers.
        tagger = build_tagging_worker(
            replace(settings, tagging_workers=threads),
            database,
            observer=metrics,
            on_change=attachments.watchers.poke,
        )
    if tagger is not None:
        attachments.on_added = tagger.wake
    board = Board.over(database, accounts, tokens, models, sign_up_open=settings.sign_up_open)
    describer = make_segment_client(settings) if settings.segmentation_target else None
    retagging = Retagging(database, models, describer.describe if describer is not None else None)
    interceptor = BoardInterceptor(
        SERVICE_NAME,
        accounts,
        call_timeout_s=settings.call_timeout_s,
        observers=(metrics,) if metrics else (),
    )
    shared = port is not None
    server = grpc.aio.server(
        interceptors=[*tracing.server_interceptors(), interceptor],
        options=server_options(settings, reuse_port=shared),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    board_pb2_grpc.add_BoardServiceServicer_to_server(BoardServicer(board, attachments, retagging), server)  # type: ignore[no-untyped-call]
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.host}:{port}" if shared else settings.address
    credentials = server_credentials(settings)
    try:
        bound = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
    except RuntimeError:
        bound = 0
    if bound == 0:
        accounts.close()
        database.dispose()
        raise RuntimeError(f"could not bind {address}")
    await server.start()
    if tagger is not None:
        tagger.start()
    started = BoardServer(server, bound, database, health, accounts, attachments, tagger, metrics)
    refresh = None if metrics is None else partial(_refresh_gauges, metrics, database, attachments)
    started._tasks.append(
        asyncio.create_task(
            watch_database(database, health, settings.health_check_interval_s, refresh), name="health"
        )
    )
    started._tasks.append(
        asyncio.create_task(keep_house(accounts, HOUSEKEEPING_INTERVAL_S), name="housekeeping")
    )
    if describer is not None:
        started._tasks.append(asyncio.create_task(learn_served_model(retagging), name="served-model"))
    return started
