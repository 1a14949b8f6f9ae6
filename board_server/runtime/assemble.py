"""One board server process put together from its Settings: the database, the use cases, the inference
backend and tagging worker, and the transports in front of them (gRPC; the HTTP listener for browsers);
and everything released again.

``build_board`` makes the parts (no port is bound), ``start_board`` binds and starts them. Collaborators
and callbacks are handed to constructors here, in the order their dependencies allow, so that no part is
wired after it was built.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial

from board_server.api.calls import CallObserver
from board_server.api.http import HttpServer, board_http_app, start_http
from board_server.api.limits import CallLimits, ClientLimits
from board_server.api.server import GrpcServer, report_health, start_grpc
from board_server.core.errors import BoardError
from board_server.domain.accounts import TEST_PASSWORD_HASHING, Accounts, password_hasher
from board_server.domain.attachments import AttachmentService, watch_hub
from board_server.domain.board import Board
from board_server.domain.comments import CommentService
from board_server.domain.idempotency import RequestIds
from board_server.domain.paging import load_page_tokens
from board_server.domain.posts import PostService
from board_server.domain.preview_cache import PreviewCache
from board_server.domain.quotas import Quotas
from board_server.domain.retag import Retagging
from board_server.domain.served_models import ServedModels
from board_server.domain.session_cache import SessionCache
from board_server.domain.uploads import Uploads
from board_server.domain.users import UserService
from board_server.runtime import tracing
from board_server.runtime.config import Settings
from board_server.runtime.database import database_for
from board_server.runtime.faults import ExitAfterCommit, parse_fault
from board_server.runtime.metrics import BoardMetrics
from board_server.storage.engine import Database
from board_server.storage.notifications import ATTACHMENTS, SESSIONS, ChangeListener
from board_server.tagging.backend import InferenceBackend, Security, open_backend
from board_server.tagging.worker import TaggingWorker

logger = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 600.0


def inference_backend(settings: Settings) -> InferenceBackend | None:
    """The process's one inference backend, or None (logged loudly) when no segmentation target is set."""
    if not settings.segmentation_target:
        logger.warning(
            "TAGGING IS OFF: BOARD_SEGMENTATION_TARGET (--segmentation-target) is not set; attachments are "
            "stored and stay PENDING until a board server with a target runs"
        )
        return None
    logger.info(
        "tagging via %s gRPC %s (%s) model %r (key files %s, timeout %.0fs, lease %.0fs, %d attempts)",
        "TorchServe" if settings.segmentation_protocol == "torchserve" else "the Open Inference Protocol",
        settings.segmentation_target,
        "TLS" if settings.segmentation_ca_file is not None else "plaintext",
        settings.segmentation_model,
        ", ".join(map(str, settings.segmentation_token_files)) or "none",
        settings.segmentation_timeout_s,
        settings.tagging_lease_seconds,
        settings.tagging_max_attempts,
    )
    ca_file = settings.segmentation_ca_file
    return open_backend(
        settings.segmentation_protocol,
        settings.segmentation_target,
        settings.segmentation_model,
        token_files=settings.segmentation_token_files,
        timeout_s=settings.segmentation_timeout_s,
        security=Security(
            root_certificates=ca_file.read_bytes() if ca_file is not None else None,
            allow_plaintext=settings.allow_plaintext_segmentation,
        ),
    )


@dataclass
class BoardParts:
    """Everything one process serves with, built and not yet started."""

    settings: Settings
    database: Database
    accounts: Accounts
    quotas: Quotas
    previews: PreviewCache
    requests: RequestIds
    board: Board
    backend: InferenceBackend | None
    tagger: TaggingWorker | None
    metrics: BoardMetrics | None
    # PostgreSQL: set while this process hears every replica's changes (the session cache counts on it).
    changes_heard: asyncio.Event | None = None

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.previews.close()
        self.accounts.close()
        self.database.dispose()

    async def aclose(self) -> None:
        """``close()`` from the event loop, whose database connections are closed on it first."""
        if self.backend is not None:
            self.backend.close()
        self.accounts.close()
        await self.database.close()


def build_board(
    settings: Settings, *, tagging_threads: int | None = None, metrics: BoardMetrics | None = None
) -> BoardParts:
    """The parts of one process over the (already migrated) database of ``settings``; ``tagging_threads``
    overrides ``settings.tagging_workers`` (0: no tagging in this process)."""
    database = database_for(settings, metrics)
    if settings.password_hashing == TEST_PASSWORD_HASHING:
        logger.warning(
            "PASSWORD HASHING IS CHEAPEST (--password-hashing cheapest): new password hashes take no time to "
            "guess; for test suites only"
        )
    # PostgreSQL: who a token names is remembered while every replica's revocations are heard.
    changes_heard = asyncio.Event() if database.loop_connections is not None else None
    try:
        tokens = load_page_tokens(database)
        accounts = Accounts(
            database,
            auth=settings.auth,
            reads_need_sign_in=settings.reads_need_sign_in,
            token_lifetime=timedelta(seconds=settings.token_lifetime_s),
            sign_in_failures_per_peer=settings.sign_in_failures_per_peer,
            sign_ups_per_peer=settings.sign_ups_per_peer,
            hasher=password_hasher(settings.password_hashing),
            sessions=SessionCache(changes_heard.is_set) if changes_heard is not None else None,
        )
    except BaseException:
        database.dispose()
        raise
    quotas = Quotas(
        writes_per_minute=settings.writes_per_user_per_minute,
        storage_bytes=settings.user_storage_quota_bytes,
    )
    backend = inference_backend(settings)
    requests = RequestIds(database, timedelta(seconds=settings.request_id_ttl_s))
    models = ServedModels(database, settings.segmentation_model)
    previews = PreviewCache(
        database,
        models,
        budget_bytes=settings.preview_cache_bytes,
        renders_per_peer=settings.preview_renders_per_peer,
    )
    watchers = watch_hub(database, settings.watch_poll_s)
    threads = settings.tagging_workers if tagging_threads is None else tagging_threads
    tagger = None
    if backend is not None and threads:
        # The worker's stored outcomes wake this process's watchers; uploads wake the worker.
        tagger = TaggingWorker(
            database,
            backend,
            threads=threads,
            poll_s=settings.tagging_poll_s,
            lease_s=settings.tagging_lease_seconds,
            backoff_max_s=settings.tagging_backoff_max_s,
            max_attempts=settings.tagging_max_attempts,
            observer=metrics,
            on_change=watchers.poke,
        )
    attachments = AttachmentService(
        database,
        accounts,
        tokens,
        previews=previews,
        quotas=quotas,
        watchers=watchers,
        requests=requests,
        max_bytes=settings.max_attachment_bytes,
        max_per_post=settings.max_attachments_per_post,
        on_added=tagger.wake if tagger is not None else None,
    )
    board = Board(
        users=UserService(database, accounts, tokens, quotas, requests, sign_up_open=settings.sign_up_open),
        posts=PostService(database, accounts, tokens, models, quotas=quotas, requests=requests),
        comments=CommentService(database, accounts, tokens, quotas, requests),
        attachments=attachments,
        uploads=Uploads(attachments, accounts, max_bytes=settings.max_attachment_bytes),
        retagging=Retagging(database, accounts, models, backend),
    )
    return BoardParts(
        settings,
        database,
        accounts,
        quotas,
        previews,
        requests,
        board,
        backend,
        tagger,
        metrics,
        changes_heard,
    )


@dataclass
class BoardServer:
    """A started board server process and what has to be released when it stops."""

    parts: BoardParts
    grpc: GrpcServer
    http: HttpServer | None = None
    serving: bool = True  # what the HTTP listener's /healthz says (the database answers)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    def _set_serving(self, ok: bool) -> None:
        self.serving = ok

    @property
    def database(self) -> Database:
        return self.parts.database

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish for up to ``grace`` seconds, release everything."""
        for task in self._tasks:
            task.cancel()
        http_stopped = self.http.stop(grace) if self.http is not None else asyncio.sleep(0)
        await asyncio.gather(self.grpc.stop(grace), http_stopped)
        await self.parts.board.attachments.watchers.close()
        if self.parts.tagger is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.parts.tagger.stop, grace)
        await self.parts.aclose()


async def start_board(
    parts: BoardParts, *, port: int | None = None, http_port: int | None = None
) -> BoardServer:
    """Bind and start ``parts``: on ``port`` (and ``http_port``) with SO_REUSEPORT when processes share
    them, else on the settings' addresses. Raises RuntimeError if an address cannot be bound (the parts are
    then released)."""
    settings, metrics = parts.settings, parts.metrics
    shared = port is not None
    address = f"{settings.host}:{port}" if shared else settings.address
    # One count of calls in progress per peer and per user for both transports of the process.
    limits = ClientLimits(CallLimits.of(settings))
    grpc_server = None
    observers = _observers(parts)
    try:
        grpc_server = await start_grpc(
            parts.board,
            parts.accounts,
            settings,
            limits=limits,
            address=address,
            reuse_port=shared,
            observers=observers,
            interceptors=tracing.server_interceptors(),
        )
        started = BoardServer(parts, grpc_server)
        if settings.http_address:
            started.http = await _start_http(started, http_port, observers, limits)
    except BaseException:
        if grpc_server is not None:
            await grpc_server.stop(0)
        parts.close()
        raise
    if parts.tagger is not None:
        parts.tagger.start()
    database = parts.database
    gauges = None if metrics is None else partial(_refresh_gauges, metrics, parts)
    started._tasks += [
        asyncio.create_task(
            report_health(
                grpc_server.health,
                database.probe,
                settings.health_check_interval_s,
                gauges,
                on_status=started._set_serving,
            ),
            name="health",
        ),
        asyncio.create_task(_keep_house(parts, HOUSEKEEPING_INTERVAL_S), name="housekeeping"),
    ]
    if parts.changes_heard is not None:  # PostgreSQL: changes committed anywhere reach this process
        callbacks = {
            ATTACHMENTS: parts.board.attachments.watchers.changed,
            SESSIONS: parts.accounts.sessions_changed,
        }
        listener = ChangeListener(database.engine, callbacks, parts.changes_heard)
        started._tasks.append(asyncio.create_task(listener.run(), name="changes"))
    if parts.backend is not None:
        started._tasks.append(asyncio.create_task(_learn_served_model(parts.board.retagging), name="model"))
    return started


async def _start_http(
    started: BoardServer, port: int | None, observers: Sequence[CallObserver], limits: ClientLimits
) -> HttpServer:
    """The HTTP listener for browsers beside the gRPC server, over the same use cases."""
    parts, settings = started.parts, started.parts.settings
    app = board_http_app(
        parts.board,
        parts.accounts,
        settings,
        limits=limits,
        observers=observers,
        serving=lambda: started.serving,
    )
    address = f"{settings.http_host}:{port}" if port is not None else settings.http_address
    return await start_http(app, settings, address=address, reuse_port=port is not None)


def _observers(parts: BoardParts) -> list[CallObserver]:
    """What sees every call, on every transport: the metrics, and in tests a fault point."""
    observers: list[CallObserver] = [parts.metrics] if parts.metrics is not None else []
    if parts.settings.test_fault:  # tests only (runtime/faults.py); config refused it off loopback
        observers.append(ExitAfterCommit(parse_fault(parts.settings.test_fault)))
    return observers


def _refresh_gauges(metrics: BoardMetrics, parts: BoardParts) -> None:
    metrics.flush()
    metrics.connections_in_use.set(parts.database.connections_in_use())
    metrics.watchers.set(parts.board.attachments.watchers.watcher_count)


async def _keep_house(parts: BoardParts, interval_s: float) -> None:
    """Sweep expired sessions, stale sign-in failures and sign-ups, past write counters and request_ids past
    their TTL now and then (every process: the deletes are idempotent, and cheap when there is nothing to
    delete)."""
    sweeps: tuple[Callable[[], Awaitable[object]], ...] = (
        parts.accounts.housekeeping,
        partial(parts.quotas.housekeeping, parts.database),
        parts.requests.housekeeping,
    )
    while True:
        for sweep in sweeps:
            try:
                await sweep()
            except Exception:  # the database may be away; the health check reports that
                logger.warning("housekeeping failed; trying again later", exc_info=True)
        await asyncio.sleep(interval_s)


async def _learn_served_model(retagging: Retagging, retry_s: float = 30.0) -> None:
    """Ask the inference server once which model (and classes) it serves, so filters know the served
    classes; retried until it answers (it may start after the board)."""
    while True:
        try:
            model = await retagging.refresh()
        except BoardError:
            await asyncio.sleep(retry_s)
            continue
        identity = model.identity
        logger.info(
            "the inference server serves %s (%s), %d classes",
            identity.arch,
            identity.weights,
            len(model.class_names),
        )
        return
