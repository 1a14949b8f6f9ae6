"""A stand-in for TorchServe's gRPC inference API, in the test process, for client tests that need tagging.

The clients under test (CLIs, Node) talk to a real board server; the board's tagging worker talks to this
model server the way it talks to TorchServe (InferenceAPIsService.Predictions with the handler's JSON answer),
so attachments go PENDING → TAGGED in well under a second without a JVM and a network on 2 CPU cores.
What it answers is set by the test: the classes (names may be hostile text), a rejection with a message,
or a hold that keeps calls waiting until released (to watch a PENDING attachment change). The real handler
and TorchServe are tested in tests/serving and tests/e2e.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from PIL import Image, ImageOps

from clients.gen.torchserve import inference_pb2, inference_pb2_grpc

MODEL = {
    "arch": "deeplabv3_fake",
    "weights": "random",
    "sha256": None,
    "untrained": True,
    "archive_sha256": "f" * 64,
}


@dataclass
class FakeModel:
    """What the next Predictions calls answer; change the fields between steps of a test."""

    classes: dict[str, float] = field(default_factory=lambda: {"dog": 0.6, "background": 0.4})
    reject: str | None = None  # "code: message" → INVALID_ARGUMENT, as TorchServe answers a bad image
    hold: threading.Event = field(default_factory=threading.Event)
    calls: int = 0

    def __post_init__(self) -> None:
        self.hold.set()  # answer at once unless a test clears it

    def answer(self, image: bytes) -> bytes:
        with Image.open(io.BytesIO(image)) as raw:
            width, height = ImageOps.exif_transpose(raw).size
        mask = Image.new("P", (width, height), 0)
        mask.paste(12, (0, 0, max(1, width // 2), height))  # class 12 (dog in VOC) on the left half
        buffer = io.BytesIO()
        mask.save(buffer, "PNG")
        pixels = width * height
        classes = [
            {"index": index, "name": name, "pixels": round(share * pixels), "fraction": share}
            for index, (name, share) in enumerate(self.classes.items())
        ]
        payload = {
            "width": width,
            "height": height,
            "classes": classes,
            "mask": base64.b64encode(buffer.getvalue()).decode(),
            "model": MODEL,
        }
        return json.dumps(payload).encode()


class _Predictions(inference_pb2_grpc.InferenceAPIsServiceServicer):
    def __init__(self, model: FakeModel) -> None:
        self._model = model

    def Predictions(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC's name
        model = self._model
        model.calls += 1
        if "describe" in request.input:
            return inference_pb2.PredictionResponse(prediction=json.dumps({"model": MODEL}).encode())
        model.hold.wait(timeout=60)
        if model.reject is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, model.reject)
        return inference_pb2.PredictionResponse(prediction=model.answer(bytes(request.input["data"])))


@dataclass
class RunningFakeModel:
    model: FakeModel
    target: str


def serve_fake_model() -> Iterator[RunningFakeModel]:
    """Start the fake on 127.0.0.1:0; yield where it listens; stop it afterwards."""
    model = FakeModel()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _Predictions(model), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield RunningFakeModel(model, f"127.0.0.1:{port}")
    finally:
        model.hold.set()
        server.stop(grace=None)
