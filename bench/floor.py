"""The floor of the board benchmark: an empty grpc.aio server answering every unary board.v1 method with the
board's own serialized answer, the fastest a Python gRPC server can do with the same calls (why these bytes:
docs/operations.md, "How this was chosen"), on uvloop as the board's processes are. Imports nothing of
board_server, so a half-edited board cannot break it.

    python -m bench.floor REPLIES.json [--port 0] [--reuseport]     # until SIGTERM; started by bench.board
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import uvloop

from bench.records import ROOT
from bench.seeding import Seed
from bench.servers import Server, running

SERVICE = "board.v1.BoardService"


def unary_methods() -> list[str]:
    from clients.gen.board.v1 import board_pb2

    service = board_pb2.DESCRIPTOR.services_by_name["BoardService"]
    return [m.name for m in service.methods if not (m.client_streaming or m.server_streaming)]


def capture_replies(target: str, seeded: Seed) -> dict[str, bytes]:
    """The board's serialized answers, one per measured operation: what the floor sends back."""
    from clients.gen.board.v1 import board_pb2

    requests = {
        "GetPost": board_pb2.GetPostRequest(id=seeded.post_ids[len(seeded.post_ids) // 2]),
        "CreatePost": board_pb2.CreatePostRequest(user_id=seeded.user_id, title="bench", content="x" * 200),
        "ListPosts": board_pb2.ListPostsRequest(page_size=50),
    }
    replies = {}
    with grpc.insecure_channel(target) as channel:
        for name, request in requests.items():
            call = channel.unary_unary(f"/{SERVICE}/{name}", type(request).SerializeToString, None)
            reply = call(request, metadata=seeded.metadata, timeout=30)
            replies[name] = reply if isinstance(reply, bytes) else b""
    return replies


def write_replies(path: Path, replies: Mapping[str, bytes]) -> Path:
    """The replies as the floor server reads them (JSON, base64 values)."""
    path.write_text(json.dumps({k: base64.b64encode(v).decode() for k, v in replies.items()}))
    return path


def read_replies(path: Path) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in json.loads(path.read_text()).items()}


async def serve(replies: Mapping[str, bytes], port: int, reuseport: bool) -> None:
    """Answer every unary method with its reply (empty where none) until SIGTERM."""

    def answering(reply: bytes) -> grpc.RpcMethodHandler[bytes, bytes]:
        async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return reply

        return grpc.unary_unary_rpc_method_handler(answer)

    handlers = {name: answering(replies.get(name, b"")) for name in unary_methods()}
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuseport))])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    await server.stop(1)


@contextmanager
def floor_servers(name: str, replies_file: Path, processes: int, work: Path, tag: str) -> Iterator[Server]:
    """The empty aio floor: one process (SO_REUSEPORT off), or ``processes`` sharing one port."""
    base = [sys.executable, "-m", "bench.floor", str(replies_file)]
    reuse = ["--reuseport"] if processes > 1 else []
    with ExitStack() as stack:
        # In the repository root: `bench` is importable from there only (it is not an installed package).
        first = stack.enter_context(
            running(f"{name}-{tag}-0", [*base, "--port", "0", *reuse], work, cwd=ROOT)
        )
        port = first.target.rsplit(":", 1)[1]
        for i in range(1, processes):
            more = stack.enter_context(
                running(f"{name}-{tag}-{i}", [*base, "--port", port, *reuse], work, cwd=ROOT)
            )
            first.procs += more.procs
            first.logs += more.logs
        first.name = name
        yield first


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("replies", type=Path, help="JSON of base64 replies by method (write_replies)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reuseport", action="store_true", help="share the port with other floor processes")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(read_replies(args.replies), args.port, args.reuseport))
    return 0


if __name__ == "__main__":
    sys.exit(main())
