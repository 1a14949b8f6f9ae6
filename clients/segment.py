"""Typed client for DeepLabv3 served by TorchServe: inference over gRPC or REST, management over REST.

    tokens = TokenSource.from_key_file("var/torchserve/key_file.json")
    client = SegmentClient(ServingEndpoints.local(), tokens)
    result = client.segment(Path("photo.jpg").read_bytes(), transport="grpc")
    result.classes[0].name, result.mask_png

TorchServe's gRPC side answers OK for items our handler rejects (the per-item 4xx is dropped there), so every
answer body is checked: a body ``{"error", "code"}`` becomes ``SegmentRejectedError`` on both transports.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import requests

logger = logging.getLogger(__name__)

Transport = Literal["grpc", "rest"]
# Match TorchServe's max_request_size/max_response_size in seg_handler/config.properties (64 MiB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_KEY_FILE = Path("var/torchserve/key_file.json")


class SegmentError(Exception):
    """Base class of every error this client raises."""


class SegmentAuthError(SegmentError):
    """TorchServe refused the token (missing, wrong or expired)."""


class SegmentTimeoutError(SegmentError):
    """No answer within the client's timeout."""


class SegmentUnavailableError(SegmentError):
    """TorchServe is not reachable, or has no worker for the model right now."""


class SegmentRejectedError(SegmentError):
    """The handler rejected the image; ``status`` is its HTTP status (400/413), ``code`` a stable string."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class SegmentServerError(SegmentError):
    """Any other failure reported by TorchServe; ``status`` is the HTTP status or gRPC code name."""

    def __init__(self, status: int | str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServingEndpoints:
    """Where TorchServe listens."""

    inference_url: str
    management_url: str
    grpc_inference_target: str
    model_name: str = "deeplabv3"

    @classmethod
    def local(
        cls,
        host: str = "127.0.0.1",
        inference_port: int = 8080,
        management_port: int = 8081,
        grpc_inference_port: int = 7070,
        model_name: str = "deeplabv3",
    ) -> ServingEndpoints:
        return cls(
            inference_url=f"http://{host}:{inference_port}",
            management_url=f"http://{host}:{management_port}",
            grpc_inference_target=f"{host}:{grpc_inference_port}",
            model_name=model_name,
        )


@dataclass(frozen=True)
class TokenSource:
    """TorchServe's inference and management keys: fixed strings, or re-read from key_file.json on every call
    (so a key rotated with TorchServe's /token API is picked up without a restart)."""

    key_file: Path | None = None
    inference_key: str | None = None
    management_key: str | None = None

    @classmethod
    def from_key_file(cls, path: Path | str) -> TokenSource:
        return cls(key_file=Path(path))

    def key(self, kind: Literal["inference", "management"]) -> str | None:
        """The key of ``kind``; raises SegmentAuthError when the key file is unreadable."""
        fixed = self.inference_key if kind == "inference" else self.management_key
        if fixed is not None or self.key_file is None:
            return fixed
        try:
            return str(json.loads(self.key_file.read_text())[kind]["key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SegmentAuthError(f"cannot read the {kind} key from {self.key_file}: {exc}") from exc


@dataclass(frozen=True)
class ClassShare:
    """One class present in the mask."""

    index: int
    name: str
    pixels: int
    fraction: float


@dataclass(frozen=True)
class Segmentation:
    """One answer: the mask (palette PNG, pixel values = class indices) and what it contains."""

    width: int
    height: int
    classes: list[ClassShare]
    mask_png: bytes
    model: dict[str, Any] = field(default_factory=dict)


def parse_answer(body: bytes) -> Segmentation:
    """Turn a handler answer into a Segmentation; raises SegmentRejectedError for an error body."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise SegmentServerError("bad-answer", f"answer is not JSON: {body[:80]!r}") from exc
    raise_for_error_body(payload)
    try:
        return Segmentation(
            width=int(payload["width"]),
            height=int(payload["height"]),
            classes=[ClassShare(**c) for c in payload["classes"]],
            mask_png=base64.b64decode(payload["mask"]),
            model=dict(payload.get("model", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SegmentServerError("bad-answer", f"unexpected answer shape: {exc}") from exc


def raise_for_error_body(payload: object) -> None:
    """Raise SegmentRejectedError when ``payload`` is the handler's ``{"error", "code"}`` body."""
    if isinstance(payload, Mapping) and "error" in payload and "code" in payload:
        status = payload.get("status")
        raise SegmentRejectedError(
            int(status) if isinstance(status, int) else 400, str(payload["code"]), str(payload["error"])
        )


def _error_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class SegmentClient:
    """Inference over gRPC or REST and management over REST, sending the token on every call."""

    def __init__(
        self,
        endpoints: ServingEndpoints,
        tokens: TokenSource,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.endpoints = endpoints
        self.tokens = tokens
        self.timeout_s = timeout_s
        # Extra gRPC channel options, e.g. a short max reconnect backoff for a long-lived background caller.
        self.channel_options = list(channel_options)
        self._http = requests.Session()
        self._channel: grpc.Channel | None = None
        self._predict: Any = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._http.close()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> SegmentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ inference
    def segment(self, image: bytes, *, transport: Transport = "grpc") -> Segmentation:
        """Segment one image. Raises SegmentRejectedError (bad image), SegmentAuthError, SegmentTimeoutError,
        SegmentUnavailableError or SegmentServerError."""
        body = self.predict_raw(image, transport=transport, fmt="json")
        return parse_answer(body)

    def segment_png(self, image: bytes, *, transport: Transport = "grpc") -> bytes:
        """The mask alone as palette PNG bytes (``format=png``); raises like ``segment``."""
        body = self.predict_raw(image, transport=transport, fmt="png")
        if body.startswith(b"\x89PNG"):
            return body
        raise_for_error_body(_error_body(body))
        raise SegmentServerError("bad-answer", f"expected a PNG, got {body[:40]!r}")

    def predict_raw(self, image: bytes, *, transport: Transport = "grpc", fmt: str = "json") -> bytes:
        """The answer body as sent by TorchServe; HTTP/gRPC failures raised as SegmentError subclasses."""
        if transport == "grpc":
            return self._predict_grpc(image, fmt)
        if transport == "rest":
            return self._predict_rest(image, fmt)
        raise ValueError(f"transport must be 'grpc' or 'rest', got {transport!r}")

    def _predict_rest(self, image: bytes, fmt: str) -> bytes:
        url = f"{self.endpoints.inference_url}/predictions/{self.endpoints.model_name}"
        headers = {"Content-Type": "application/octet-stream", **self._bearer("inference")}
        if fmt == "png":
            headers["Accept"] = "image/png"
        try:
            response = self._http.post(url, data=image, headers=headers, timeout=self.timeout_s)
        except requests.Timeout as exc:
            raise SegmentTimeoutError(f"no answer from {url} within {self.timeout_s}s") from exc
        except requests.ConnectionError as exc:
            raise SegmentUnavailableError(f"cannot reach {url}: {exc}") from exc
        if response.ok:
            return response.content
        self._raise_for_rest(response)
        raise AssertionError("unreachable")

    def _predict_grpc(self, image: bytes, fmt: str) -> bytes:
        from clients.gen.torchserve import inference_pb2

        stub = self._inference_stub()
        request = inference_pb2.PredictionsRequest(
            model_name=self.endpoints.model_name, input={"data": image, "format": fmt.encode()}
        )
        try:
            response = stub.Predictions(request, timeout=self.timeout_s, metadata=self._metadata("inference"))
        except grpc.RpcError as exc:
            raise _from_rpc_error(exc, self.endpoints.grpc_inference_target) from exc
        return bytes(response.prediction)

    def _inference_stub(self) -> Any:
        if self._predict is None:
            from clients.gen.torchserve import inference_pb2_grpc

            self._channel = grpc.insecure_channel(
                self.endpoints.grpc_inference_target,
                options=[
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    *self.channel_options,
                ],
            )
            self._predict = inference_pb2_grpc.InferenceAPIsServiceStub(  # type: ignore[no-untyped-call]
                self._channel
            )
        return self._predict

    # ------------------------------------------------------------------------------------------ management
    def list_models(self) -> list[dict[str, Any]]:
        """The registered models: [{modelName, modelUrl}]."""
        payload = self._management("GET", "/models")
        return list(payload.get("models", []))

    def describe(self, model_name: str | None = None) -> list[dict[str, Any]]:
        """TorchServe's description of each version of the model, workers (pid, status) included."""
        return list(self._management("GET", f"/models/{model_name or self.endpoints.model_name}"))

    def worker_pids(self, model_name: str | None = None) -> list[int]:
        """The pids of the model's workers, as the management API reports them."""
        return [int(w["pid"]) for d in self.describe(model_name) for w in d.get("workers", []) if "pid" in w]

    def scale_workers(
        self, min_worker: int, max_worker: int | None = None, *, model_name: str | None = None
    ) -> dict[str, Any]:
        """Scale the model's workers and wait until TorchServe reports the change done."""
        params = {
            "min_worker": str(min_worker),
            "max_worker": str(max_worker if max_worker is not None else min_worker),
            "synchronous": "true",
        }
        return dict(
            self._management("PUT", f"/models/{model_name or self.endpoints.model_name}", params=params)
        )

    def _management(self, method: str, path: str, params: Mapping[str, str] | None = None) -> Any:
        url = f"{self.endpoints.management_url}{path}"
        try:
            response = self._http.request(
                method, url, params=params, headers=self._bearer("management"), timeout=self.timeout_s
            )
        except requests.Timeout as exc:
            raise SegmentTimeoutError(f"no answer from {url} within {self.timeout_s}s") from exc
        except requests.ConnectionError as exc:
            raise SegmentUnavailableError(f"cannot reach {url}: {exc}") from exc
        if not response.ok:
            self._raise_for_rest(response)
        return response.json()

    # ------------------------------------------------------------------------------------------ helpers
    def _bearer(self, kind: Literal["inference", "management"]) -> dict[str, str]:
        key = self.tokens.key(kind)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _metadata(self, kind: Literal["inference", "management"]) -> list[tuple[str, str]]:
        key = self.tokens.key(kind)
        return [("authorization", f"Bearer {key}")] if key else []

    @staticmethod
    def _raise_for_rest(response: requests.Response) -> None:
        payload = _error_body(response.content)
        raise_for_error_body(payload)
        message = response.reason or ""
        if isinstance(payload, Mapping):
            message = str(payload.get("message", message))
            if payload.get("type") == "InvalidKeyException":
                raise SegmentAuthError(f"token refused: {message}")
        if response.status_code in (401, 403):
            raise SegmentAuthError(f"token refused: {message}")
        if response.status_code == 413:
            raise SegmentRejectedError(413, "too_large", "request exceeds TorchServe's max_request_size")
        if response.status_code == 503:
            raise SegmentUnavailableError(f"503: {message}")
        raise SegmentServerError(response.status_code, message)


def _from_rpc_error(exc: grpc.RpcError, target: str) -> SegmentError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return SegmentAuthError(f"token refused: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return SegmentTimeoutError(f"no answer from {target} in time: {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return SegmentUnavailableError(f"{target}: {details}")
    rejected = {
        grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_argument"),
        grpc.StatusCode.RESOURCE_EXHAUSTED: (413, "too_large"),
        # TorchServe cancels a gRPC call whose request exceeds max_request_size.
        grpc.StatusCode.CANCELLED: (413, "too_large"),
    }
    if code in rejected:
        status, name = rejected[code]
        return SegmentRejectedError(status, name, f"{code.name}: {details}")
    return SegmentServerError(code.name, details)
