"""One board server process put together from its Settings: the database, the use cases, the inference
backend and tagging worker, and the gRPC transport in front of them; and everything released again.

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

from board_server.api.interceptors import CallObserver
from board_server.api.server import GrpcServer, report_health, start_grpc
from board_server.core.errors import BoardError
from board_server.domain.accounts import Accounts
from board_server.domain.attachments import AttachmentService, watch_hub
from board_server.domain.board import Board
from board_server.domain.comments import CommentService
from board_server.domain.idempotency import RequestIds
from board_server.domain.paging import load_page_tokens
from board_server.domain.posts import PostService
from board_server.domain.retag import Retagging
from board_server.domain.served_models import ServedModels
from board_server.domain.users import UserService
from board_server.runtime import tracing
from board_server.runtime.config import Settings
from board_server.runtime.faults import ExitAfterCommit, parse_fault
from board_server.runtime.metrics import BoardMetrics
from board_server.storage.engine import Database, open_database
from board_server.tagging.backend import InferenceBackend, TorchServeBackend
from board_server.tagging.worker import TaggingWorker

logger = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 600.0


def database_for(settings: Settings, metrics: BoardMetrics | None = None) -> Database:
    """The database of ``settings`` (not migrated: the supervisor or ``board-server migrate`` does that)."""
    return open_database(
        settings.database_url,
        threads=settings.worker_threads,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        connect_timeout_s=settings.database_connect_timeout_s,
        on_batch=metrics.committed if metrics is not None else None,
    )


def inference_backend(settings: Settings) -> InferenceBackend | None:
    """The process's one inference backend, or None (logged loudly) when no segmentation target is set."""
    if not settings.segmentation_target:
        logger.warning(
            "TAGGING IS OFF: BOARD_SEGMENTATION_TARGET (--segmentation-target) is not set; attachments are "
            "stored and stay PENDING until a board server with a target runs"
        )
        return None
    logger.info(
        "tagging via TorchServe gRPC %s model %r (key file %s, timeout %.0fs, lease %.0fs, %d attempts)",
        settings.segmentation_target,
        settings.segmentation_model,
        settings.segmentation_token_file or "none",
        settings.segmentation_timeout_s,
        settings.tagging_lease_seconds,
        settings.tagging_max_attempts,
    )
    return TorchServeBackend(
        settings.segmentation_target,
        settings.segmentation_model,
        token_file=settings.segmentation_token_file,
        timeout_s=settings.segmentation_timeout_s,
    )


@dataclass
class BoardParts:
    """Everything one process serves with, built and not yet started."""

    settings: Settings
    database: Database
    accounts: Accounts
    requests: RequestIds
    board: Board
    backend: InferenceBackend | None
    tagger: TaggingWorker | None
    metrics: BoardMetrics | None

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.accounts.close()
        self.database.dispose()


def build_board(
    settings: Settings, *, tagging_threads: int | None = None, metrics: BoardMetrics | None = None
) -> BoardParts:
    """The parts of one process over the (already migrated) database of ``settings``; ``tagging_threads``
    overrides ``settings.tagging_workers`` (0: no tagging in this process)."""
    database = database_for(settings, metrics)
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
    backend = inference_backend(settings)
    requests = RequestIds(database, timedelta(seconds=settings.request_id_ttl_s))
    models = ServedModels(database, settings.segmentation_model)
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
        models,
        watchers,
        requests=requests,
        max_bytes=settings.max_attachment_bytes,
        max_per_post=settings.max_attachments_per_post,
        on_added=tagger.wake if tagger is not None else None,
    )
    board = Board(
        users=UserService(database, accounts, tokens, requests, sign_up_open=settings.sign_up_open),
        posts=PostService(database, accounts, tokens, models, requests),
        comments=CommentService(database, accounts, tokens, requests),
        attachments=attachments,
        retagging=Retagging(database, accounts, models, backend),
    )
    return BoardParts(settings, database, accounts, requests, board, backend, tagger, metrics)


@dataclass
class BoardServer:
    """A started board server process and what has to be released when it stops."""

    parts: BoardParts
    grpc: GrpcServer
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def database(self) -> Database:
        return self.parts.database

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish for up to ``grace`` seconds, release everything."""
        for task in self._tasks:
            task.cancel()
        await self.grpc.stop(grace)
        await self.parts.board.attachments.watchers.close()
        if self.parts.tagger is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.parts.tagger.stop, grace)
        self.parts.close()


async def start_board(parts: BoardParts, *, port: int | None = None) -> BoardServer:
    """Bind and start ``parts``: on ``port`` with SO_REUSEPORT when processes share it, else on the
    settings' address. Raises RuntimeError if the address cannot be bound (the parts are then released)."""
    settings, metrics = parts.settings, parts.metrics
    shared = port is not None
    address = f"{settings.host}:{port}" if shared else settings.address
    observers: list[CallObserver] = [metrics] if metrics is not None else []
    if settings.test_fault:  # tests only (runtime/faults.py); config refused it off loopback
        observers.append(ExitAfterCommit(parse_fault(settings.test_fault)))
    try:
        grpc_server = await start_grpc(
            parts.board,
            parts.accounts,
            settings,
            address=address,
            reuse_port=shared,
            observers=observers,
            interceptors=tracing.server_interceptors(),
        )
    except BaseException:
        parts.close()
        raise
    if parts.tagger is not None:
        parts.tagger.start()
    started = BoardServer(parts, grpc_server)
    database = parts.database
    gauges = None if metrics is None else partial(_refresh_gauges, metrics, parts)
    started._tasks += [
        asyncio.create_task(
            report_health(grpc_server.health, database.probe, settings.health_check_interval_s, gauges),
            name="health",
        ),
        asyncio.create_task(
            _keep_house((parts.accounts.housekeeping, parts.requests.housekeeping), HOUSEKEEPING_INTERVAL_S),
            name="housekeeping",
        ),
    ]
    if parts.backend is not None:
        started._tasks.append(asyncio.create_task(_learn_served_model(parts.board.retagging), name="model"))
    return started


def _refresh_gauges(metrics: BoardMetrics, parts: BoardParts) -> None:
    metrics.connections_in_use.set(parts.database.engine.pool.checkedout())  # type: ignore[attr-defined]
    metrics.watchers.set(parts.board.attachments.watchers.watcher_count)


async def _keep_house(sweeps: Sequence[Callable[[], Awaitable[object]]], interval_s: float) -> None:
    """Sweep expired sessions, stale sign-in failures and request_ids past their TTL now and then (every
    process: the deletes are idempotent, and cheap when there is nothing to delete)."""
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
