"""Typed client for the segmentation model on an Open Inference Protocol v2 server, over gRPC
(``inference.GRPCInferenceService``: ServerReady, ModelReady, ModelMetadata, ModelInfer).

    with OipClient("127.0.0.1:8085") as client:
        client.server_ready(), client.model_ready()
        result = client.segment(Path("photo.jpg").read_bytes())     # a clients.segment.Segmentation
        client.describe()                                          # identity and class names, no forward

The tensors and parameters are seg_handler/oip/contract.py's. Failures are clients.segment's SegmentError
classes, so the board's verdicts do not care which protocol answered:

- SegmentRejectedError: INVALID_ARGUMENT, FAILED_PRECONDITION, or RESOURCE_EXHAUSTED with the model's
  ``"<code>: <message>"`` details (400/415/413); an image over ``max_request_bytes``, refused before sending;
- SegmentAuthError: PERMISSION_DENIED / UNAUTHENTICATED (a server behind an authorizing proxy);
- SegmentTimeoutError: DEADLINE_EXCEEDED;
- SegmentUnavailableError: UNAVAILABLE, ``reached`` False when the server cannot be reached or the model is
  not ready, True otherwise; NOT_FOUND (no model of that name) and UNIMPLEMENTED (no OIP server there);
- SegmentCancelledError: CANCELLED;
- SegmentBadAnswerError: an answer without the contract's outputs;
- SegmentServerError: RESOURCE_EXHAUSTED without the model's details (the server's own limits), INTERNAL,
  UNKNOWN and the rest.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from clients.segment import (
    ANSWERED_ALIKE,
    DEFAULT_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    TRANSPORT_FAILURE,
    ClassShare,
    Segmentation,
    SegmentBadAnswerError,
    SegmentError,
    SegmentRejectedError,
    SegmentServerError,
    SegmentUnavailableError,
    TokenSource,
    bearer,
    call_with_fresh_key,
    common_rpc_error,
    handler_rejection,
    inference_channel,
    rpc_code_and_details,
)
from seg_handler.oip import contract

# KServe's words for a model that is loading or failed to load: the request never reached it.
_NOT_READY = re.compile(r"not ready|not loaded|is not available", re.IGNORECASE)
_RAW_FORMATS = {"INT32": "i", "INT64": "q", "FP32": "f", "FP64": "d", "UINT32": "I", "UINT64": "Q"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """ModelMetadata's answer: the model's name, versions, platform and tensor signature."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class OipClient:
    """One OIP v2 gRPC server; the key of ``tokens`` (if any) goes with every call as ``authorization``."""

    def __init__(
        self,
        target: str,
        model_name: str = "deeplabv3",
        tokens: TokenSource | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        channel_options: Sequence[tuple[str, Any]] = (),
        root_certificates: bytes | None = None,
        allow_plaintext: bool = False,
        max_request_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self.model_name = model_name
        self.tokens = tokens or TokenSource()
        self.timeout_s = timeout_s
        self.max_request_bytes = max_request_bytes
        self._channel = inference_channel(
            target,
            max_request_bytes,
            channel_options,
            root_certificates=root_certificates,
            allow_plaintext=allow_plaintext,
        )
        from clients.gen.inference import grpc_predict_v2_pb2_grpc

        self._stub: Any = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(  # type: ignore[no-untyped-call]
            self._channel
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> OipClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ health
    def server_ready(self) -> bool:
        """ServerReady: every model the server loads can infer. Raises SegmentError subclasses."""
        from clients.gen.inference import grpc_predict_v2_pb2 as pb

        return bool(self._call("ServerReady", pb.ServerReadyRequest(), 0).ready)

    def model_ready(self) -> bool:
        """ModelReady for our model. Raises SegmentError subclasses."""
        from clients.gen.inference import grpc_predict_v2_pb2 as pb

        return bool(self._call("ModelReady", pb.ModelReadyRequest(name=self.model_name), 0).ready)

    def model_metadata(self) -> ModelMetadata:
        """ModelMetadata for our model. Raises SegmentError subclasses."""
        from clients.gen.inference import grpc_predict_v2_pb2 as pb

        answer = self._call("ModelMetadata", pb.ModelMetadataRequest(name=self.model_name), 0)

        def specs(tensors: Sequence[Any]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in tensors)

        return ModelMetadata(
            answer.name, tuple(answer.versions), answer.platform, specs(answer.inputs), specs(answer.outputs)
        )

    # ------------------------------------------------------------------------------------------ inference
    def segment(self, image: bytes) -> Segmentation:
        """Segment one image. Raises the SegmentError subclasses of the module docstring."""
        return parse_segmentation(self.predict_raw(image))

    def predict_raw(self, image: bytes) -> Any:
        """The ModelInferResponse for one image, unparsed; raises like ``segment``."""
        from clients.gen.inference import grpc_predict_v2_pb2 as pb

        if len(image) > self.max_request_bytes:
            raise SegmentRejectedError(
                413,
                "request_too_large",
                f"{len(image)} bytes is over the model server's request limit ({self.max_request_bytes})",
            )
        tensor = pb.ModelInferRequest.InferInputTensor(
            name=contract.IMAGE,
            datatype="BYTES",
            shape=[1],
            contents=pb.InferTensorContents(bytes_contents=[image]),
        )
        request = pb.ModelInferRequest(model_name=self.model_name, inputs=[tensor])
        return self._call("ModelInfer", request, len(image))

    def describe(self) -> dict[str, Any]:
        """The served model's identity and class names, without an image or a forward (the ``describe``
        parameter of the contract). Raises SegmentError subclasses."""
        from clients.gen.inference import grpc_predict_v2_pb2 as pb

        request = pb.ModelInferRequest(
            model_name=self.model_name,
            parameters={contract.DESCRIBE_PARAMETER: pb.InferParameter(bool_param=True)},
        )
        model = _model_parameter(parameter_values(self._call("ModelInfer", request, 0).parameters))
        if "arch" not in model:
            raise SegmentBadAnswerError("bad-answer", f"not a model identity: {str(model)[:80]}")
        return model

    def _call(self, method: str, request: Any, request_bytes: int) -> Any:
        def send(key: str | None) -> Any:
            try:
                return getattr(self._stub, method)(request, timeout=self.timeout_s, metadata=bearer(key))
            except grpc.RpcError as exc:
                raise oip_error(exc, self.target, request_bytes) from exc

        return call_with_fresh_key(self.tokens, send)


# ------------------------------------------------------------------------------------------ answers


def parameter_values(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """InferParameter messages as Python values (bool, int, str or float)."""
    values = {}
    for name, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        values[name] = getattr(parameter, kind) if kind else None
    return values


def _model_parameter(values: Mapping[str, Any]) -> dict[str, Any]:
    text = values.get(contract.MODEL_PARAMETER)
    try:
        model = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        model = None
    if not isinstance(model, dict):
        raise SegmentBadAnswerError(
            "bad-answer", f"no model identity in the answer's parameters: {text!r:.80}"
        )
    return model


def output_values(response: Any) -> dict[str, list[Any]]:
    """Each output's elements by name, from ``contents`` or from ``raw_output_contents`` (Triton's form).

    Raises SegmentBadAnswerError for raw contents that do not fit their datatype.
    """
    raw = list(response.raw_output_contents)
    values: dict[str, list[Any]] = {}
    for index, output in enumerate(response.outputs):
        if raw:
            values[output.name] = _raw_values(output.datatype, raw[index] if index < len(raw) else b"")
        elif output.datatype == "BYTES":
            values[output.name] = list(output.contents.bytes_contents)
        elif output.datatype in ("INT8", "INT16", "INT32"):
            values[output.name] = list(output.contents.int_contents)
        elif output.datatype == "INT64":
            values[output.name] = list(output.contents.int64_contents)
        elif output.datatype in ("FP32", "FP64"):
            contents = output.contents
            values[output.name] = list(contents.fp64_contents or contents.fp32_contents)
        else:
            values[output.name] = []
    return values


def _raw_values(datatype: str, data: bytes) -> list[Any]:
    try:
        if datatype == "BYTES":
            items, offset = [], 0
            while offset < len(data):
                (length,) = struct.unpack_from("<I", data, offset)
                items.append(data[offset + 4 : offset + 4 + length])
                offset += 4 + length
            return items
        fmt = _RAW_FORMATS[datatype]
        return list(struct.unpack(f"<{len(data) // struct.calcsize(fmt)}{fmt}", data))
    except (KeyError, struct.error) as exc:
        raise SegmentBadAnswerError("bad-answer", f"unreadable raw {datatype} output: {exc}") from exc


def parse_segmentation(response: Any) -> Segmentation:
    """A Segmentation from a ModelInfer answer; raises SegmentBadAnswerError when it lacks the contract's
    outputs or parameters."""
    outputs = output_values(response)
    parameters = parameter_values(response.parameters)
    try:
        mask = outputs[contract.MASK]
        indices, names = outputs[contract.CLASS_INDEX], outputs[contract.CLASS_NAME]
        pixels, fractions = outputs[contract.CLASS_PIXELS], outputs[contract.CLASS_FRACTION]
        if len(mask) != 1 or not len(indices) == len(names) == len(pixels) == len(fractions):
            raise ValueError("outputs of unequal lengths")
        classes = [
            ClassShare(int(i), bytes(n).decode("utf-8"), int(p), float(f))
            for i, n, p, f in zip(indices, names, pixels, fractions, strict=True)
        ]
        return Segmentation(
            width=int(parameters[contract.WIDTH_PARAMETER]),
            height=int(parameters[contract.HEIGHT_PARAMETER]),
            classes=classes,
            mask_png=bytes(mask[0]),
            model=_model_parameter(parameters),
        )
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise SegmentBadAnswerError("bad-answer", f"unexpected answer shape: {exc!r}") from exc


# ------------------------------------------------------------------------------------------ failures


def oip_error(exc: grpc.RpcError, target: str, request_bytes: int) -> SegmentError:
    """Classify a failed OIP call (see the list in the module docstring)."""
    code, details = rpc_code_and_details(exc)
    error: SegmentError | None = None
    if code in ANSWERED_ALIKE:
        error = common_rpc_error(code, details, target, request_bytes)
    elif code == grpc.StatusCode.UNAVAILABLE:
        reached = not (TRANSPORT_FAILURE.search(details) or _NOT_READY.search(details))
        error = SegmentUnavailableError(f"{target}: {details}", reached=reached)
    elif code == grpc.StatusCode.NOT_FOUND:
        error = SegmentUnavailableError(
            f"{target}: {details}: the server serves no model of that name (check --segmentation-model)"
        )
    elif code == grpc.StatusCode.UNIMPLEMENTED:
        error = SegmentUnavailableError(
            f"{target}: {details}: no OIP inference service there (check --segmentation-protocol)"
        )
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # The model's own 413 carries "<code>: <message>"; anything else is the server's limit, not the image.
        error = handler_rejection(413, details) or SegmentServerError(code.name, details)
    else:
        error = common_rpc_error(code, details, target, request_bytes)
    return error if error is not None else SegmentServerError(code.name, details)
