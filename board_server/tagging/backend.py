"""The inference backend the board tags through: one small interface (segment an image, describe the served
model, close) that the tagging worker, the served-model check and re-tags share; one per process.

TorchServe's gRPC inference API is today's implementation (clients/segment.py, with the inference key). An
answer is turned into the board's own types here, where it arrives; failures are clients.segment's errors,
which tagging/outcomes.py classifies the same way for every backend.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from board_server.core.records import ModelIdentity, ServedModel, TagResult
from clients.segment import Segmentation, SegmentClient, ServingEndpoints, TokenSource

logger = logging.getLogger(__name__)


class InferenceBackend(Protocol):
    """Where images are segmented. Every method may raise clients.segment.SegmentError's subclasses."""

    @property
    def target(self) -> str:
        """Where the backend sends its calls (for logs)."""
        ...

    def segment(self, image: bytes) -> TagResult:
        """The labels, mask and model identity of one image."""
        ...

    def describe(self) -> ServedModel:
        """The served model and its classes, without sending an image."""
        ...

    def close(self) -> None: ...


def tag_result(answer: Segmentation) -> TagResult:
    """The board's view of a handler's answer: labels as (name, fraction, pixels), the mask, the model."""
    return TagResult(
        labels=tuple((c.name, float(c.fraction), int(c.pixels)) for c in answer.classes),
        mask_png=answer.mask_png,
        model=ModelIdentity.from_answer(answer.model),
    )


class TorchServeBackend:
    """TorchServe's gRPC inference API, authenticated with the inference key re-read from ``token_file``;
    TLS with ``root_certificates``, plaintext only to a loopback target unless ``allow_plaintext``."""

    def __init__(
        self,
        target: str,
        model_name: str,
        *,
        token_file: Path | None,
        timeout_s: float,
        root_certificates: bytes | None = None,
        allow_plaintext: bool = False,
    ) -> None:
        self._target = target
        endpoints = ServingEndpoints(
            inference_url="", management_url="", grpc_inference_target=target, model_name=model_name
        )
        tokens = TokenSource.from_key_file(token_file) if token_file else TokenSource()
        self._client = SegmentClient(
            endpoints,
            tokens,
            timeout_s=timeout_s,
            root_certificates=root_certificates,
            allow_plaintext=allow_plaintext,
            # Reconnect within ~2 s after TorchServe comes back (gRPC's default backoff grows to 120 s).
            channel_options=[
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )

    @property
    def target(self) -> str:
        return self._target

    def segment(self, image: bytes) -> TagResult:
        return tag_result(self._client.segment(image, transport="grpc"))

    def describe(self) -> ServedModel:
        return ServedModel.from_answer(self._client.describe(transport="grpc"))

    def close(self) -> None:
        self._client.close()
