"""Wiring of the board server: database, services, servicer, interceptors, health and reflection."""

from __future__ import annotations

import logging
import logging.handlers
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from board_server.attachments import AttachmentService
from board_server.config import Settings
from board_server.database import Database, migrate, open_database
from board_server.errors import BoardError, to_grpc_status
from board_server.service import Board
from board_server.servicer import BoardServicer
from board_server.tagging import TaggingWorker, build_tagging_worker
from clients.gen.board.v1 import board_pb2, board_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = board_pb2.DESCRIPTOR.services_by_name["BoardService"].full_name
AUDIT_FORMAT = "| %(asctime)s | %(levelname)s | %(message)s | %(filename)s | %(funcName)s |"

if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:  # grpc's runtime class is not generic; only its stubs are.
    _ServerInterceptor = grpc.ServerInterceptor


class ErrorMappingInterceptor(_ServerInterceptor):
    """Turns domain errors into their statuses and anything unexpected into a logged, generic INTERNAL."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        behaviour = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                return behaviour(request, context)
            except BoardError as exc:
                logger.debug("%s: %s", method, exc.message)
                context.abort_with_status(to_grpc_status(exc))
            except Exception:
                logger.exception("%s failed", method)
                context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("%s took %.1f ms", method, (time.perf_counter() - started) * 1000)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def configure_audit_log(settings: Settings) -> logging.Handler:
    """Attach the rotating audit file to the ``board.audit`` logger; return the handler (to close it)."""
    settings.audit_log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        settings.audit_log_path,
        maxBytes=settings.audit_log_max_bytes,
        backupCount=settings.audit_log_backups,
        encoding="utf-8",
    )
    handler.setFormatter(logging.Formatter(AUDIT_FORMAT))
    audit = logging.getLogger("board.audit")
    audit.setLevel(logging.INFO)
    audit.addHandler(handler)
    return handler


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """Channel options shared by the board server and the benchmark's echo floor."""
    return [
        # Large enough for an attachment of max_attachment_bytes plus the rest of the message.
        ("grpc.max_receive_message_length", settings.grpc_message_limit),
        ("grpc.max_send_message_length", settings.grpc_message_limit),
        ("grpc.so_reuseport", 0),
    ]


@dataclass
class BoardServer:
    """A started board server and what has to be released when it stops."""

    server: grpc.Server
    port: int
    database: Database
    health: health.HealthServicer
    tagger: TaggingWorker | None = None

    def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish for up to ``grace`` seconds, close the database."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.tagger is not None:
            self.tagger.stop(timeout=grace)
        self.database.dispose()


def create_server(settings: Settings) -> BoardServer:
    """Open (and migrate) the database, build the gRPC server, bind and start it; return it with its port.

    Raises RuntimeError if the address cannot be bound.
    """
    database = open_database(settings)
    migrate(database.engine)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="board"),
        interceptors=[ErrorMappingInterceptor()],
        options=server_options(settings),
        maximum_concurrent_rpcs=None,
    )
    tagger = build_tagging_worker(settings, database)
    attachments = AttachmentService(
        database, settings.max_attachment_bytes, on_added=tagger.wake if tagger is not None else None
    )
    servicer = BoardServicer(Board.over(database), attachments)
    board_pb2_grpc.add_BoardServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(settings.address)
    except RuntimeError:
        database.dispose()
        raise
    if port == 0:
        database.dispose()
        raise RuntimeError(f"could not bind {settings.address}")
    server.start()
    if tagger is not None:
        tagger.start()
    return BoardServer(server=server, port=port, database=database, health=health_servicer, tagger=tagger)
