"""The inference backend the board tags through: one small interface (segment an image, describe the served
model, close) that the tagging worker, the served-model check and re-tags share; one per process.

Two protocols, one client per model server: TorchServe's gRPC inference API (clients/segment.py, the
default) and the Open Inference Protocol v2 (clients/oip.py). Either way the servers of
``--segmentation-target`` sit in one TargetPool (tagging/targets.py: several servers, round-robin, a dead
one skipped), answers become the board's own types here, where they arrive, and failures are
clients.segment's errors, which tagging/outcomes.py classifies the same way for every protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

from board_server.core.records import ModelIdentity, ServedModel, TagResult
from board_server.tagging.targets import TargetClient, TargetPool
from clients.oip import OipClient
from clients.segment import Segmentation, SegmentClient, ServingEndpoints, TokenSource

logger = logging.getLogger(__name__)

InferenceProtocol = Literal["torchserve", "oip"]
PROTOCOLS: tuple[InferenceProtocol, ...] = ("torchserve", "oip")
# Reconnect within ~2 s after a model server comes back (gRPC's default backoff grows to 120 s).
RECONNECT_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000))


class InferenceBackend(Protocol):
    """Where images are segmented. Every method may raise clients.segment.SegmentError's subclasses."""

    @property
    def target(self) -> str:
        """Where the backend sends its calls (for logs)."""
        ...

    def segment(self, image: bytes) -> TagResult:
        """The labels, mask and model identity of one image (and which server answered)."""
        ...

    def describe(self) -> ServedModel:
        """The served model and its classes, without sending an image."""
        ...

    def close(self) -> None: ...


def tag_result(answer: Segmentation) -> TagResult:
    """The board's view of a model's answer: labels as (name, fraction, pixels), the mask, the model."""
    return TagResult(
        labels=tuple((c.name, float(c.fraction), int(c.pixels)) for c in answer.classes),
        mask_png=answer.mask_png,
        model=ModelIdentity.from_answer(answer.model),
    )


def _tokens(token_file: Path | None) -> TokenSource:
    return TokenSource.from_key_file(token_file) if token_file else TokenSource()


class TorchServeTarget:
    """One TorchServe's gRPC inference API, with the inference key re-read from ``token_file``."""

    def __init__(self, address: str, model_name: str, *, token_file: Path | None, timeout_s: float) -> None:
        endpoints = ServingEndpoints(
            inference_url="", management_url="", grpc_inference_target=address, model_name=model_name
        )
        self._client = SegmentClient(
            endpoints, _tokens(token_file), timeout_s=timeout_s, channel_options=RECONNECT_OPTIONS
        )

    def segment(self, image: bytes) -> TagResult:
        return tag_result(self._client.segment(image, transport="grpc"))

    def describe(self) -> ServedModel:
        return ServedModel.from_answer(self._client.describe(transport="grpc"))

    def close(self) -> None:
        self._client.close()


class OipTarget:
    """One Open Inference Protocol v2 server over gRPC; a key is sent only when ``token_file`` is given."""

    def __init__(self, address: str, model_name: str, *, token_file: Path | None, timeout_s: float) -> None:
        self._client = OipClient(
            address, model_name, _tokens(token_file), timeout_s=timeout_s, channel_options=RECONNECT_OPTIONS
        )

    def segment(self, image: bytes) -> TagResult:
        return tag_result(self._client.segment(image))

    def describe(self) -> ServedModel:
        return ServedModel.from_answer(self._client.describe())

    def close(self) -> None:
        self._client.close()


def open_backend(
    protocol: InferenceProtocol,
    target: str,
    model_name: str,
    *,
    token_files: Sequence[Path] = (),
    timeout_s: float,
) -> TargetPool:
    """The backend for ``target`` (one address, a comma list or dns:///) in ``protocol``.

    Raises ValueError for an unknown protocol, a malformed target or key files that do not fit it.
    """
    kinds: dict[str, type[TorchServeTarget] | type[OipTarget]] = {
        "torchserve": TorchServeTarget,
        "oip": OipTarget,
    }
    if protocol not in kinds:
        raise ValueError(f"unknown segmentation protocol {protocol!r} (use {' or '.join(PROTOCOLS)})")
    kind = kinds[protocol]

    def connect(address: str, token_file: Path | None) -> TargetClient:
        return kind(address, model_name, token_file=token_file, timeout_s=timeout_s)

    return TargetPool(target, connect, token_files)
