"""Typed client for DeepLabv3 served by TorchServe: inference over gRPC or REST, management over REST.

    tokens = TokenSource.from_key_file("var/torchserve/inference.key")   # or key_file.json
    client = SegmentClient(ServingEndpoints.local(), tokens)
    result = client.segment(Path("photo.jpg").read_bytes(), transport="grpc")
    result.classes[0].name, result.mask_png, result.model["archive_sha256"]
    client.describe()                     # the served model's identity, no image, no forward

Every failure is one of these SegmentError subclasses, so a caller can tell a bad image from a sick server
(TorchServe's answer over gRPC / REST in brackets):

- SegmentRejectedError (status 400/413/415): the image is bad, too large or of an unsupported format
  [INVALID_ARGUMENT, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, or OK with an error body / 4xx JSON]; also a
  request over TorchServe's max_request_size, refused before sending (``max_request_bytes``);
- SegmentAuthError: the key is missing, wrong or expired [PERMISSION_DENIED / 400 InvalidKeyException];
- SegmentTimeoutError: no answer in time [DEADLINE_EXCEEDED / read timeout];
- SegmentUnavailableError: not reachable or no worker, ``reached`` False [UNAVAILABLE, INTERNAL "has no
  worker" / connection refused, 503]; the handler failed before answering, ``reached`` True;
- SegmentWorkerDiedError: the Python worker died with the request in flight [RESOURCE_EXHAUSTED "Worker
  died." / 500 or 507 "Worker died."];
- SegmentCancelledError: the call was cancelled, and not for its size [CANCELLED; TorchServe also cancels a
  request over max_request_size, which this client does not send];
- SegmentBadAnswerError: an answer that is not what the handler writes [OK with a malformed body];
- SegmentServerError (base of the three above): any other server failure [INTERNAL, UNKNOWN / 5xx];
- SegmentInsecureTargetError: a gRPC call to a target off this machine without TLS (``root_certificates``)
  and without ``allow_plaintext``: refused before connecting, so that the inference key never crosses a
  network in plaintext.

TorchServe 0.12 gives a rejected image a non-OK gRPC status only when the handler raises (it does for a
request alone in its batch, the default); a rejection that shared a batch still comes as OK with an error
body ``{"error", "code", "status"}``, which both transports read as SegmentRejectedError.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import grpc

from clients.channels import is_local_target, open_channel

if TYPE_CHECKING:  # imported at the first REST call: the board's gRPC tagging never loads it
    import requests

logger = logging.getLogger(__name__)

Transport = Literal["grpc", "rest"]
# Match TorchServe's max_request_size/max_response_size in seg_handler/config.properties (64 MiB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_S = 60.0
# The inference key alone, kept current by the launcher (`make run`/`make serve`); key_file.json works too.
DEFAULT_KEY_FILE = Path("var/torchserve/inference.key")


class SegmentError(Exception):
    """Base class of every error this client raises. ``target`` names the server that failed, where a caller
    spreading calls over several set it (empty otherwise)."""

    target: str = ""


class SegmentAuthError(SegmentError):
    """TorchServe refused the token (missing, wrong or expired), or the key file cannot be read."""


class SegmentTimeoutError(SegmentError):
    """No answer within the client's timeout."""


class SegmentUnavailableError(SegmentError):
    """TorchServe cannot take the request now.

    ``reached`` is False when the request never got to a worker (connection refused, no worker for the model:
    nothing about the image is known) and True when the handler failed on it without answering.
    """

    def __init__(self, message: str, *, reached: bool = False) -> None:
        super().__init__(message)
        self.reached = reached


class SegmentRejectedError(SegmentError):
    """The image cannot be segmented: ``status`` is the HTTP status (400/413/415), ``code`` a stable name."""

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


class SegmentWorkerDiedError(SegmentServerError):
    """TorchServe's Python worker died with the request in flight (killed, out of memory); it restarts."""


class SegmentCancelledError(SegmentServerError):
    """The call was cancelled (by the server or by closing the client) for another reason than its size."""


class SegmentInsecureTargetError(SegmentError):
    """A gRPC target off this machine without TLS: the inference key would cross the network in plaintext."""


class SegmentBadAnswerError(SegmentServerError):
    """An answer that is not what the handler writes (not JSON, missing fields): retrying will not help."""


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
    """TorchServe keys: fixed strings, or re-read from a file on every call, so a key renewed by
    ``seg_handler.launcher`` (TorchServe's /token API) is picked up without a restart.

    The file is either a plain key file holding only the inference key (``var/torchserve/inference.key``,
    what the board is given) or TorchServe's own ``key_file.json`` with both keys.
    """

    key_file: Path | None = None
    inference_key: str | None = None
    management_key: str | None = None

    @classmethod
    def from_key_file(cls, path: Path | str) -> TokenSource:
        return cls(key_file=Path(path))

    def key(self, kind: Literal["inference", "management"]) -> str | None:
        """The key of ``kind``; raises SegmentAuthError when the key file is unreadable or lacks it."""
        fixed = self.inference_key if kind == "inference" else self.management_key
        if fixed is not None or self.key_file is None:
            return fixed
        try:
            text = self.key_file.read_text().strip()
            if not text.startswith("{"):  # a plain key file: the inference key alone
                if kind != "inference":
                    raise SegmentAuthError(
                        f"{self.key_file} holds only the inference key, not the {kind} key"
                    )
                if not text or len(text.split()) != 1:
                    raise ValueError("expected one key on one line")
                return text
            return str(json.loads(text)[kind]["key"])
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
    """Turn a handler answer into a Segmentation; raises SegmentRejectedError for an error body and
    SegmentBadAnswerError for anything else that is not a segmentation."""
    payload = _json_payload(body)
    raise_for_error_body(payload)
    try:
        return Segmentation(
            width=int(payload["width"]),
            height=int(payload["height"]),
            classes=[ClassShare(**c) for c in payload["classes"]],
            mask_png=base64.b64decode(payload["mask"], validate=True),
            model=dict(payload.get("model", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SegmentBadAnswerError("bad-answer", f"unexpected answer shape: {exc}") from exc


def parse_identity(body: bytes) -> dict[str, Any]:
    """The model identity from a ``describe`` answer ``{"model": {...}}``; raises like parse_answer."""
    payload = _json_payload(body)
    raise_for_error_body(payload)
    model = payload.get("model") if isinstance(payload, Mapping) else None
    if not isinstance(model, Mapping) or "arch" not in model:
        raise SegmentBadAnswerError("bad-answer", f"not a model identity: {body[:80]!r}")
    return dict(model)


def raise_for_error_body(payload: object) -> None:
    """Raise SegmentRejectedError when ``payload`` is the handler's ``{"error", "code"}`` body."""
    if isinstance(payload, Mapping) and "error" in payload and "code" in payload:
        status = payload.get("status")
        code = int(status) if isinstance(status, int) else 400
        if code >= 500:  # the handler's own failure (forward, postprocess), not the image's
            raise SegmentServerError(code, f"{payload['code']}: {payload['error']}")
        raise SegmentRejectedError(code, str(payload["code"]), str(payload["error"]))


def _json_payload(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise SegmentBadAnswerError("bad-answer", f"answer is not JSON: {body[:80]!r}") from exc


def _error_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


R = TypeVar("R")


def call_with_fresh_key(tokens: TokenSource, call: Callable[[str | None], R]) -> R:
    """``call(inference key)``, sent once more with the key file's new key when it was refused and the key
    was renewed meanwhile. Raises what ``call`` raises.

    The launcher renews the inference key before it expires and TorchServe drops the old key at once: a call
    that raced the renewal is refused, and is sent once more if the key file now holds another key.
    """
    key = tokens.key("inference")
    try:
        return call(key)
    except SegmentAuthError:
        fresh = tokens.key("inference")
        if fresh == key:
            raise
        logger.info("the inference key was renewed during the call; sending it again with the new key")
        return call(fresh)


def bearer(key: str | None) -> list[tuple[str, str]]:
    """gRPC metadata carrying ``key`` as TorchServe (or an authorizing proxy) expects it; none without one."""
    return [("authorization", f"Bearer {key}")] if key else []


def inference_channel(
    target: str,
    max_request_bytes: int,
    options: Sequence[tuple[str, Any]],
    *,
    root_certificates: bytes | None = None,
    allow_plaintext: bool = False,
) -> grpc.Channel:
    """A channel to a model server's gRPC port, sized for an image and a full-size mask: TLS with
    ``root_certificates``; without them plaintext, to a loopback target only unless ``allow_plaintext`` (a
    trusted network). Raises SegmentInsecureTargetError for plaintext to a remote target."""
    tls = root_certificates is not None
    if not tls and not allow_plaintext and not is_local_target(target):
        raise SegmentInsecureTargetError(
            f"refusing to send the inference key in plaintext to {target}: give root certificates "
            "(TLS), or allow plaintext on a network you trust"
        )
    return open_channel(
        target,
        tls=tls,
        root_certificates=root_certificates,
        options=[
            # The image plus the request's few fields.
            ("grpc.max_send_message_length", max_request_bytes + 64 * 1024),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            *options,
        ],
    )


class SegmentClient:
    """Inference over gRPC or REST and management over REST, sending the token on every call."""

    def __init__(
        self,
        endpoints: ServingEndpoints,
        tokens: TokenSource,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        channel_options: Sequence[tuple[str, Any]] = (),
        max_request_bytes: int = MAX_MESSAGE_BYTES,
        root_certificates: bytes | None = None,
        allow_plaintext: bool = False,
    ) -> None:
        self.endpoints = endpoints
        self.tokens = tokens
        self.timeout_s = timeout_s
        # TorchServe's max_request_size: a larger image is refused here (413) instead of being sent to be
        # cut off (gRPC CANCELLED, REST 413 with an empty body).
        self.max_request_bytes = max_request_bytes
        # Extra gRPC channel options, e.g. a short max reconnect backoff for a long-lived background caller.
        self.channel_options = list(channel_options)
        # gRPC inference: TLS with these roots; without them plaintext, to a loopback target only unless
        # ``allow_plaintext`` (a trusted network).
        self.root_certificates = root_certificates
        self.allow_plaintext = allow_plaintext
        self._session: requests.Session | None = None
        self._channel: grpc.Channel | None = None
        self._predict: Any = None

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def _http(self) -> requests.Session:
        if self._session is None:
            import requests

            self._session = requests.Session()
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._predict = None

    def __enter__(self) -> SegmentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ inference
    def segment(self, image: bytes, *, transport: Transport = "grpc") -> Segmentation:
        """Segment one image. Raises one of the SegmentError subclasses in the module docstring."""
        body = self.predict_raw(image, transport=transport, fmt="json")
        return parse_answer(body)

    def segment_png(self, image: bytes, *, transport: Transport = "grpc") -> bytes:
        """The mask alone as palette PNG bytes (``format=png``); raises like ``segment``."""
        body = self.predict_raw(image, transport=transport, fmt="png")
        if body.startswith(b"\x89PNG"):
            return body
        raise_for_error_body(_error_body(body))
        raise SegmentBadAnswerError("bad-answer", f"expected a PNG, got {body[:40]!r}")

    def describe(self, *, transport: Transport = "grpc") -> dict[str, Any]:
        """The served model's identity ({arch, weights, sha256, untrained, archive_sha256, class_names})
        without sending an image or running a forward; raises like ``segment``."""
        if transport == "grpc":
            body = self._call_with_fresh_key(lambda key: self._grpc({"describe": b"1"}, key))
        elif transport == "rest":
            url = f"{self.endpoints.inference_url}/predictions/{self.endpoints.model_name}"
            body = self._call_with_fresh_key(
                lambda key: self._rest(url, {"Content-Type": "application/json"}, b'{"describe": true}', key)
            )
        else:
            raise ValueError(f"transport must be 'grpc' or 'rest', got {transport!r}")
        return parse_identity(body)

    def predict_raw(self, image: bytes, *, transport: Transport = "grpc", fmt: str = "json") -> bytes:
        """The answer body as sent by TorchServe; HTTP/gRPC failures raised as SegmentError subclasses."""
        if transport not in ("grpc", "rest"):
            raise ValueError(f"transport must be 'grpc' or 'rest', got {transport!r}")
        if len(image) > self.max_request_bytes:
            raise SegmentRejectedError(
                413,
                "request_too_large",
                f"{len(image)} bytes is over TorchServe's max_request_size ({self.max_request_bytes})",
            )
        if transport == "grpc":
            inputs = {"data": image, "format": fmt.encode()}
            return self._call_with_fresh_key(lambda key: self._grpc(inputs, key))
        url = f"{self.endpoints.inference_url}/predictions/{self.endpoints.model_name}"
        headers = {"Content-Type": "application/octet-stream"}
        if fmt == "png":
            headers["Accept"] = "image/png"
        return self._call_with_fresh_key(lambda key: self._rest(url, headers, image, key))

    def _call_with_fresh_key(self, call: Callable[[str | None], bytes]) -> bytes:
        return call_with_fresh_key(self.tokens, call)

    def _rest(self, url: str, headers: Mapping[str, str], body: bytes, key: str | None) -> bytes:
        import requests

        auth = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = self._http.post(url, data=body, headers={**headers, **auth}, timeout=self.timeout_s)
        except requests.Timeout as exc:
            raise SegmentTimeoutError(f"no answer from {url} within {self.timeout_s}s") from exc
        except requests.ConnectionError as exc:
            raise SegmentUnavailableError(f"cannot reach {url}: {exc}") from exc
        if response.ok:
            return response.content
        self._raise_for_rest(response)
        raise AssertionError("unreachable")

    def _grpc(self, inputs: Mapping[str, bytes], key: str | None) -> bytes:
        from clients.gen.torchserve import inference_pb2

        stub = self._inference_stub()
        request = inference_pb2.PredictionsRequest(model_name=self.endpoints.model_name, input=inputs)
        try:
            response = stub.Predictions(request, timeout=self.timeout_s, metadata=bearer(key))
        except grpc.RpcError as exc:
            size = sum(len(v) for v in inputs.values())
            raise _from_rpc_error(exc, self.endpoints.grpc_inference_target, size) from exc
        return bytes(response.prediction)

    def _inference_stub(self) -> Any:
        if self._predict is None:
            from clients.gen.torchserve import inference_pb2_grpc

            self._channel = inference_channel(
                self.endpoints.grpc_inference_target,
                self.max_request_bytes,
                self.channel_options,
                root_certificates=self.root_certificates,
                allow_plaintext=self.allow_plaintext,
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

    def describe_model(self, model_name: str | None = None) -> list[dict[str, Any]]:
        """TorchServe's description of each version of the model, workers (pid, status) included."""
        return list(self._management("GET", f"/models/{model_name or self.endpoints.model_name}"))

    def worker_pids(self, model_name: str | None = None) -> list[int]:
        """The pids of the model's workers, as the management API reports them."""
        described = self.describe_model(model_name)
        return [int(w["pid"]) for d in described for w in d.get("workers", []) if "pid" in w]

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
        import requests

        url = f"{self.endpoints.management_url}{path}"
        key = self.tokens.key("management")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = self._http.request(method, url, params=params, headers=headers, timeout=self.timeout_s)
        except requests.Timeout as exc:
            raise SegmentTimeoutError(f"no answer from {url} within {self.timeout_s}s") from exc
        except requests.ConnectionError as exc:
            raise SegmentUnavailableError(f"cannot reach {url}: {exc}") from exc
        if not response.ok:
            self._raise_for_rest(response)
        return response.json()

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _raise_for_rest(response: requests.Response) -> None:
        payload = _error_body(response.content)
        raise_for_error_body(payload)
        message = response.reason or ""
        if isinstance(payload, Mapping):
            message = str(payload.get("message", message))
            if payload.get("type") == "InvalidKeyException":
                raise SegmentAuthError(f"token refused: {message}")
        status = response.status_code
        if status in (401, 403):
            raise SegmentAuthError(f"token refused: {message}")
        if status == 413:  # refused by the frontend before the handler ran, with an empty body
            raise SegmentRejectedError(
                413, "request_too_large", "request exceeds TorchServe's max_request_size"
            )
        if _WORKER_DIED in message:
            raise SegmentWorkerDiedError(status, message)
        if _NO_WORKER in message:
            raise SegmentUnavailableError(f"{status}: {message}")
        if _NO_MODEL in message:
            raise SegmentUnavailableError(_no_model(message))
        if status == 503:
            raise SegmentUnavailableError(f"{status}: {message}", reached=True)
        raise SegmentServerError(status, message)


_WORKER_DIED = "Worker died."
_NO_WORKER = "has no worker to serve"
_NO_MODEL = "Model not found"


def _no_model(details: str) -> str:
    # A configuration error, not the image's: callers pause and retry instead of failing uploads one by one.
    return f"{details}: TorchServe serves no model of that name (check the model name, --segmentation-model)"


# UNAVAILABLE for these never reached a worker (the server down, restarting, or the connection cut).
TRANSPORT_FAILURE = re.compile(
    r"failed to connect|connection refused|connect failed|socket closed|connection reset|broken pipe|"
    r"network is unreachable|no route to host|dns resolution failed|goaway|keepalive",
    re.IGNORECASE,
)
_HANDLER_DETAILS = re.compile(r"^([a-z][a-z0-9_]*): (.*)$", re.DOTALL)


def handler_rejection(status: int, details: str) -> SegmentRejectedError | None:
    """The rejection a handler raised as ``"<code>: <message>"`` (e.g. ``corrupt: ...``); None for details of
    another shape (the server's own)."""
    match = _HANDLER_DETAILS.match(details)
    return SegmentRejectedError(status, match.group(1), match.group(2)) if match else None


def _rejection(status: int, fallback_code: str, details: str) -> SegmentRejectedError:
    # The handler raises PredictionException("<code>: <message>"): keep its code, e.g. "corrupt".
    return handler_rejection(status, details) or SegmentRejectedError(status, fallback_code, details)


# Codes that only ever mean one thing from a model server's inference API: the image was refused.
REJECTED_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_argument"),
    grpc.StatusCode.FAILED_PRECONDITION: (415, "unsupported"),
}


def rpc_code_and_details(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code of a failed call and the first line of its details (TorchServe appends the Java
    exception's class on a second line)."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    raw = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    return code, raw.split("\n", 1)[0].strip()


def common_rpc_error(
    code: grpc.StatusCode, details: str, target: str, request_bytes: int
) -> SegmentError | None:
    """What a status means alike from every model server: auth, deadline, a refused image, a cancelled call;
    None for the codes each server uses in its own way (UNAVAILABLE, RESOURCE_EXHAUSTED, ...)."""
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return SegmentAuthError(f"token refused: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return SegmentTimeoutError(f"no answer from {target} in time: {details}")
    if code in REJECTED_CODES:
        return _rejection(*REJECTED_CODES[code], details)
    if code == grpc.StatusCode.CANCELLED:
        # TorchServe also resets the stream of a request over its max_request_size, but the clients refuse
        # those before sending (max_request_bytes): this one was cancelled for another reason.
        return SegmentCancelledError(code.name, f"{details} (request of {request_bytes} bytes)")
    return None


# Decided before the details are read: auth and deadlines mean the same whatever the details say.
ANSWERED_ALIKE = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)


def _from_rpc_error(exc: grpc.RpcError, target: str, request_bytes: int) -> SegmentError:
    """Classify a failed gRPC Predictions call (see the list in the module docstring)."""
    code, details = rpc_code_and_details(exc)
    error: SegmentError | None = None
    if code in ANSWERED_ALIKE:
        error = common_rpc_error(code, details, target, request_bytes)
    elif code == grpc.StatusCode.UNAVAILABLE:
        reached = not TRANSPORT_FAILURE.search(details)
        error = SegmentUnavailableError(f"{target}: {details}", reached=reached)
    elif _NO_WORKER in details:
        error = SegmentUnavailableError(f"{target}: {details}")
    elif _NO_MODEL in details:
        error = SegmentUnavailableError(f"{target}: {_no_model(details)}")
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # The same code for a worker that died mid-request and for a too-large image: the details tell.
        dead = _WORKER_DIED in details
        error = SegmentWorkerDiedError(code.name, details) if dead else _rejection(413, "too_large", details)
    else:
        error = common_rpc_error(code, details, target, request_bytes)
    return error if error is not None else SegmentServerError(code.name, details)
