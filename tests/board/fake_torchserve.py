"""TorchServe's gRPC Predictions, as far as a board uses it, in the test process: for tests of the board's own
behaviour around a model server (audit lines of RetryAttachment and RetagAttachments, a lease that expires
while a call is in flight) that need no model and no Java.

``describe`` is answered with a fixed model identity; every image is refused as corrupt (400), so an upload
ends FAILED at once. With ``hold=True`` an image call is held until ``release()`` (or the server stops): a
board that calls it has a call in flight for as long as the test wants, and ``wait_for_calls`` says when.
The real TorchServe and its handler are exercised in tests/e2e and tests/serving.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc

from clients.gen.torchserve import inference_pb2

SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
MODEL = {
    "arch": "fake_arch",
    "weights": "random",
    "sha256": None,
    "untrained": True,
    "archive_sha256": "f" * 64,
    "class_names": ["background", "dog"],
}
REFUSAL = "corrupt: the fake model server refuses every image"


class FakeTorchServe:
    """A gRPC server with TorchServe's Predictions method on ``host`` (127.0.0.1), TLS with ``credentials``;
    ``target`` is HOST:PORT."""

    def __init__(
        self,
        *,
        hold: bool = False,
        host: str = "127.0.0.1",
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.host = host
        self._hold = hold
        self._released = threading.Event()
        self._calls = 0
        self._changed = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.unary_unary_rpc_method_handler(
            self._predictions,
            request_deserializer=inference_pb2.PredictionsRequest.FromString,
            response_serializer=inference_pb2.PredictionResponse.SerializeToString,
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Predictions": handler}),)
        )
        address = f"{host}:0"
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def image_calls(self) -> int:
        """Image calls received so far (describe calls are not counted)."""
        with self._changed:
            return self._calls

    def wait_for_calls(self, count: int, timeout: float) -> None:
        """Until ``count`` image calls have arrived; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._calls >= count, timeout):
                raise TimeoutError(f"{self._calls} image call(s) after {timeout}s, wanted {count}")

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        """Release the held calls and stop serving."""
        self.release()
        self._server.stop(grace=None)

    def release(self) -> None:
        """Answer the held calls (and every later one at once)."""
        self._released.set()

    def _predictions(self, request: Any, context: grpc.ServicerContext) -> Any:
        if "describe" in request.input:
            body = json.dumps({"model": MODEL}).encode()
            return inference_pb2.PredictionResponse(prediction=body)
        with self._changed:
            self._calls += 1
            self._changed.notify_all()
        if self._hold:
            self._released.wait()
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, REFUSAL)


@contextmanager
def fake_torchserve(
    *, hold: bool = False, host: str = "127.0.0.1", credentials: grpc.ServerCredentials | None = None
) -> Iterator[FakeTorchServe]:
    """A started FakeTorchServe, stopped (its held calls released) on exit."""
    fake = FakeTorchServe(hold=hold, host=host, credentials=credentials)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
