"""OpenTelemetry traces of the board: off unless the standard ``OTEL_*`` environment variables ask for them.

Turned on by ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or
``OTEL_TRACES_EXPORTER=otlp``); ``OTEL_SDK_DISABLED=true`` keeps them off. The SDK reads the rest itself
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, headers, sampler, ...). The spans themselves are
made through board_server/core/spans.py:

- one server span per RPC (opentelemetry-instrumentation-grpc's aio server interceptor), continuing the
  caller's trace from its ``traceparent`` metadata;
- for tagging, a tree under the upload's span: ``tag attachment`` → ``claim``, the TorchServe call (a gRPC
  client span; its context travels to TorchServe in the call's metadata) and ``store``. The upload's span
  context is stored with the attachment (column ``traceparent``), so the tagging joins the upload's trace
  on whichever process or replica claims it.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace

from board_server.core.spans import enabled

logger = logging.getLogger(__name__)


def configure_tracing(service_name: str = "board-server") -> Any:
    """Install the SDK's TracerProvider with the OTLP exporter (configured by OTEL_* variables) and
    instrument gRPC clients created from now on; return the provider (to shut it down)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    logger.info("tracing on: spans go to the OTLP exporter configured by OTEL_* variables")
    return provider


def install(provider: Any) -> None:
    """Make ``provider`` the global one and instrument gRPC client channels (TorchServe calls)."""
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient

    trace.set_tracer_provider(provider)
    instrumentor = GrpcInstrumentorClient()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)


def server_interceptors() -> list[Any]:
    """The aio server interceptor making one span per RPC (empty while tracing is off)."""
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]  # type: ignore[no-untyped-call]
