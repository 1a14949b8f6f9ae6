"""KServe's gRPC inference service (``inference.GRPCInferenceService``) for our model, bound where we say.

KServe's own ``ModelServer`` binds every interface (``[::]``) and adds a REST server; this module puts
together the same parts of KServe (its model repository, data plane, servicer, and the interceptor that turns
exceptions into statuses) on one gRPC address of our choosing, loopback by default, so that the development
server listens on loopback like TorchServe does.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from seg_handler.oip.model import SegmentationModel

logger = logging.getLogger(__name__)

# As TorchServe's max_request_size/max_response_size (seg_handler/config.properties): a 40 MP photo fits,
# and so does its full-size mask.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


async def serve(model: SegmentationModel, host: str, port: int, *, grace_s: float = 10.0) -> None:
    """Load ``model``, serve it on ``host:port`` until SIGTERM or SIGINT, then stop within ``grace_s``.

    Logs ``listening on HOST:PORT`` once it takes calls (the launcher waits for that line and for ModelReady).
    Raises RuntimeError when the address cannot be bound.
    """
    model.load()
    repository = ModelRepository()
    repository.update(model)
    servicer = InferenceServicer(DataPlane(model_registry=repository), ModelRepositoryExtension(repository))
    server = grpc.aio.server(
        interceptors=(ExceptionToStatusInterceptor(),),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise RuntimeError(f"cannot listen on {host}:{port}")
    await server.start()
    logger.info("OIP v2 gRPC inference service for model %r listening on %s:%d", model.name, host, bound)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    logger.info("stopping: calls in flight get %.0fs", grace_s)
    await server.stop(grace_s)
    model.stop()
