"""Spans from any layer (opentelemetry's API only; runtime/tracing.py installs the SDK when traces are on):
nothing is recorded, and nearly nothing is spent, while tracing is off."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject

TRACER_NAME = "board_server"


def enabled() -> bool:
    """Whether an SDK TracerProvider is installed (the API's default provider makes no spans)."""
    return type(trace.get_tracer_provider()).__name__ == "TracerProvider"


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, to store with an upload (None while tracing is off)."""
    if not enabled():
        return None
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def span(name: str, *, traceparent: str | None = None, **attributes: Any) -> Iterator[None]:
    """A span named ``name`` under the current one, or under ``traceparent`` (another process's span)."""
    with _span(name, traceparent, trace.SpanKind.INTERNAL, attributes):
        yield


@contextmanager
def server_span(name: str, *, traceparent: str | None = None, **attributes: Any) -> Iterator[None]:
    """The span of a call this process serves, continuing the caller's ``traceparent`` when it sent one."""
    with _span(name, traceparent, trace.SpanKind.SERVER, attributes):
        yield


@contextmanager
def _span(
    name: str, traceparent: str | None, kind: trace.SpanKind, attributes: dict[str, Any]
) -> Iterator[None]:
    if not enabled():
        yield
        return
    parent = extract({"traceparent": traceparent}) if traceparent else otel_context.get_current()
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes or None):
        yield


def recorded_span(name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A span under the current one for something that already happened between the two times (ns)."""
    if not enabled():
        return
    tracer = trace.get_tracer(TRACER_NAME)
    tracer.start_span(name, start_time=start_ns, attributes=attributes or None).end(end_time=end_ns)
