"""Serving in this process: build, bind and start the board, wait for a stop signal, drain, release."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry

from board_server.runtime.config import Settings
from board_server.runtime.logs import AuditRotator, audit_append_handler, route_audit

logger = logging.getLogger("board_server")


async def serve_until_signalled(
    settings: Settings,
    *,
    port: int | None,
    tagging_threads: int,
    on_ready: Callable[[int, int | None], None],
    http_port: int | None = None,
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Serve in this process until one of ``signals``, then drain in-flight calls for the grace period."""
    from board_server.runtime.assemble import build_board, start_board
    from board_server.runtime.metrics import BoardMetrics

    tracer_provider = None
    if settings.tracing_enabled:
        from board_server.runtime.tracing import configure_tracing

        tracer_provider = configure_tracing()
    # One process: its own registry, served here; several: samples written for the supervisor to serve.
    registry = CollectorRegistry() if settings.metrics_address and port is None else None
    metrics = BoardMetrics(registry) if settings.metrics_address else None
    board = await start_board(
        build_board(settings, tagging_threads=tagging_threads, metrics=metrics),
        port=port,
        http_port=http_port,
    )
    exporter = None
    if registry is not None:
        from board_server.runtime.metrics import serve_metrics

        try:
            exporter = serve_metrics(settings.metrics_address, registry, board.database)
        except OSError as exc:
            await board.stop(0)
            raise RuntimeError(f"could not serve metrics on {settings.metrics_address}: {exc}") from exc
    # Everything made while starting (modules, the schema, handlers: ~130,000 objects) lives as long as the
    # process: moved out of the collector's sight, a full collection no longer walks it. Under load one took
    # 75-100 ms, every call of the process waiting behind it; frozen, none ran under load (gc callbacks).
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    logger.info("event loop %s", type(loop).__module__.partition(".")[0])
    on_ready(board.port, board.http_port)
    stopping = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    logger.info("draining for up to %.1fs", settings.grace_seconds)
    await board.stop(settings.grace_seconds)
    if exporter is not None:
        exporter.shutdown()
        exporter.server_close()
    if tracer_provider is not None:
        tracer_provider.shutdown()


def run_event_loop(settings: Settings, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to its end on a new event loop of the kind ``settings`` names (``--event-loop``)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if settings.event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def announce_http(settings: Settings, port: int) -> None:
    """The HTTP listener's line, logged before 'listening on' (tools parse both)."""
    scheme = "https" if settings.tls else "http"
    logger.info("web app and Connect on %s://%s:%d/", scheme, settings.http_host, port)


def serve_single(settings: Settings) -> int:
    """Serve in this very process (``--processes 1``)."""
    handler = audit_append_handler(settings)
    route_audit(handler)
    rotator = AuditRotator(settings)
    rotator.start()

    def ready(port: int, http_port: int | None) -> None:
        if http_port is not None:
            announce_http(settings, http_port)
        # Tests and tools parse this line to learn the bound port (the address may say port 0).
        logger.info("listening on %s:%d", settings.host, port)

    try:
        run_event_loop(
            settings,
            serve_until_signalled(
                settings, port=None, tagging_threads=settings.tagging_workers, on_ready=ready
            ),
        )
    finally:
        rotator.stop()
        handler.close()
    logger.info("stopped")
    return 0
