"""Run a board server in this process with OpenTelemetry's in-memory exporter, upload one photo through it,
wait until it is TAGGED by a real TorchServe, read it once over Connect (the HTTP listener) continuing a
given trace, and print every finished span as JSON lines.

A separate process (started by tests/e2e/test_tracing.py) because a tracer provider and the gRPC client
instrumentation are process-wide: the test process keeps neither.

    python -m tests.e2e.tracing_probe --target HOST:PORT --key-file FILE --database-url URL
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image

from board_server.runtime import tracing
from board_server.runtime.assemble import build_board, start_board
from board_server.runtime.config import Settings
from board_server.runtime.database import database_for
from board_server.storage.engine import migrate
from clients.board import BoardClient
from clients.gen.board.v1 import board_pb2
from clients.gen.board.v1.board_connect import BoardServiceClientSync


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (30, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def upload_and_wait(target: str) -> tuple[int, str]:
    """Sign up, post, attach a photo, watch it to its end; (attachment id, final status name)."""
    email = f"trace-{uuid.uuid4().hex[:8]}@example.org"
    with BoardClient(target, timeout=60) as client:
        client.create_user("Tracer", email, "correct horse battery")
        client.sign_in(email, "correct horse battery")
        post = client.create_post(0, "traced", "a photo whose tagging is traced")
        attachment = client.add_attachment(post.id, "blue.jpg", photo())
        done = client.wait_for_tagging(attachment.id, timeout=120)
    return attachment.id, board_pb2.AttachmentStatus.Name(done.status)


# The caller's trace that the Connect call continues (W3C traceparent).
CONNECT_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def read_over_connect(url: str, attachment_id: int) -> None:
    with BoardServiceClientSync(url) as client:
        request = board_pb2.GetAttachmentRequest(id=attachment_id)
        client.get_attachment(request, headers={"traceparent": CONNECT_TRACEPARENT})


async def run(args: argparse.Namespace) -> int:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    settings = Settings(
        address="127.0.0.1:0",
        database_url=args.database_url,
        audit_log_path=Path(args.audit_log),
        metrics_address="",
        http_address="127.0.0.1:0",
        segmentation_target=args.target,
        segmentation_token_files=(Path(args.key_file),),
        segmentation_timeout_s=60.0,
        tagging_workers=1,
        tagging_poll_s=0.3,
    )
    database = database_for(settings)
    migrate(database.engine)
    database.dispose()
    board = await start_board(build_board(settings))
    try:
        attachment_id, status = await asyncio.to_thread(upload_and_wait, f"127.0.0.1:{board.port}")
        await asyncio.to_thread(read_over_connect, f"http://127.0.0.1:{board.http_port}", attachment_id)
    finally:
        await board.stop(1.0)
    provider.force_flush()
    print(json.dumps({"attachment": attachment_id, "status": status}))
    for span in exporter.get_finished_spans():
        context, parent = span.get_span_context(), span.parent
        record = {
            "name": span.name,
            "kind": span.kind.name,
            "trace_id": f"{context.trace_id:032x}" if context else "",
            "span_id": f"{context.span_id:016x}" if context else "",
            "parent_id": f"{parent.span_id:016x}" if parent else "",
            "attributes": {key: str(value) for key, value in (span.attributes or {}).items()},
        }
        print(json.dumps(record))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="TorchServe's gRPC inference HOST:PORT")
    parser.add_argument("--key-file", required=True, help="file holding the inference key")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--audit-log", required=True)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
