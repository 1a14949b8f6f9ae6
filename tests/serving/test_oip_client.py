"""The OIP client without a server: each status an OIP server may answer becomes the error TorchServe's
equivalent becomes, so the board's verdicts are the same; answers in either tensor form are read alike."""

from __future__ import annotations

import struct
from typing import Any

import grpc
import pytest

from board_server.tagging.outcomes import classify
from clients.gen.inference import grpc_predict_v2_pb2 as pb
from clients.oip import oip_error, output_values, parse_segmentation
from clients.segment import (
    SegmentAuthError,
    SegmentBadAnswerError,
    SegmentCancelledError,
    SegmentError,
    SegmentRejectedError,
    SegmentServerError,
    SegmentTimeoutError,
    SegmentUnavailableError,
)
from seg_handler.oip import contract

Code = grpc.StatusCode


class Failed(grpc.RpcError, grpc.Call):
    """A failed call as grpc raises it: a status code and its details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


@pytest.mark.parametrize(
    ("code", "details", "error", "action"),
    [
        (Code.INVALID_ARGUMENT, "corrupt: truncated or corrupt image data", SegmentRejectedError, "fail"),
        (Code.RESOURCE_EXHAUSTED, "too_large: image exceeds the pixel limit", SegmentRejectedError, "fail"),
        (Code.FAILED_PRECONDITION, "unsupported_format: ICO images", SegmentRejectedError, "fail"),
        # The server's own limits, not the image's: retried.
        (Code.RESOURCE_EXHAUSTED, "Received message larger than max (5 vs. 4)", SegmentServerError, "retry"),
        (Code.UNAVAILABLE, "failed to connect to all addresses; connection refused", SegmentUnavailableError,
         "pause"),
        (Code.UNAVAILABLE, "Model with name deeplabv3 is not ready.", SegmentUnavailableError, "pause"),
        (Code.UNAVAILABLE, "the model failed on it", SegmentUnavailableError, "retry"),
        (Code.NOT_FOUND, "Model with name other does not exist.", SegmentUnavailableError, "pause"),
        (Code.UNIMPLEMENTED, "Method not found!", SegmentUnavailableError, "pause"),
        (Code.PERMISSION_DENIED, "token refused", SegmentAuthError, "pause"),
        (Code.DEADLINE_EXCEEDED, "Deadline Exceeded", SegmentTimeoutError, "retry"),
        (Code.CANCELLED, "Cancelled", SegmentCancelledError, "retry"),
        (Code.INTERNAL, "inference_failed: inference failed: boom", SegmentServerError, "retry"),
    ],
)  # fmt: skip
def test_each_status_is_the_error_and_verdict_torchserve_s_equivalent_gets(
    code: grpc.StatusCode, details: str, error: type[SegmentError], action: str
) -> None:
    raised = oip_error(Failed(code, details), "127.0.0.1:8085", 100)

    assert type(raised) is error
    assert classify(raised).action == action


def test_a_rejection_keeps_the_model_s_code_and_message() -> None:
    raised = oip_error(Failed(Code.INVALID_ARGUMENT, "corrupt: truncated image"), "t", 10)

    assert isinstance(raised, SegmentRejectedError)
    assert (raised.status, raised.code, raised.message) == (400, "corrupt", "truncated image")
    assert classify(raised).reason == "rejected by the model (400 corrupt): truncated image"


def answer(*, raw: bool) -> pb.ModelInferResponse:
    """The contract's answer for a two-class mask, with its tensors in ``contents`` or raw (Triton's form)."""
    values: list[tuple[str, str, list[Any]]] = [
        (contract.MASK, "BYTES", [b"\x89PNG-mask"]),
        (contract.CLASS_INDEX, "INT32", [0, 12]),
        (contract.CLASS_NAME, "BYTES", [b"background", b"dog"]),
        (contract.CLASS_PIXELS, "INT64", [6, 2]),
        (contract.CLASS_FRACTION, "FP64", [0.75, 0.25]),
    ]
    response = pb.ModelInferResponse(
        model_name="deeplabv3",
        parameters={
            contract.MODEL_PARAMETER: pb.InferParameter(string_param='{"arch": "a", "archive_sha256": "f"}'),
            contract.WIDTH_PARAMETER: pb.InferParameter(int64_param=4),
            contract.HEIGHT_PARAMETER: pb.InferParameter(int64_param=2),
        },
    )
    fields = {
        "INT32": "int_contents",
        "INT64": "int64_contents",
        "FP64": "fp64_contents",
        "BYTES": "bytes_contents",
    }
    formats = {"INT32": "<i", "INT64": "<q", "FP64": "<d"}
    for name, datatype, data in values:
        tensor = response.outputs.add(name=name, datatype=datatype, shape=[len(data)])
        if not raw:
            getattr(tensor.contents, fields[datatype]).extend(data)
        elif datatype == "BYTES":
            response.raw_output_contents.append(b"".join(struct.pack("<I", len(v)) + v for v in data))
        else:
            response.raw_output_contents.append(b"".join(struct.pack(formats[datatype], v) for v in data))
    return response


def test_tensors_in_contents_and_in_raw_output_contents_are_read_alike() -> None:
    assert output_values(answer(raw=True)) == output_values(answer(raw=False))
    parsed = parse_segmentation(answer(raw=True))

    assert (parsed.width, parsed.height, parsed.mask_png) == (4, 2, b"\x89PNG-mask")
    assert [(c.index, c.name, c.pixels, c.fraction) for c in parsed.classes] == [
        (0, "background", 6, 0.75),
        (12, "dog", 2, 0.25),
    ]
    assert parsed.model == {"arch": "a", "archive_sha256": "f"}


def test_an_answer_without_the_contract_s_outputs_is_a_bad_answer() -> None:
    incomplete = answer(raw=False)
    del incomplete.outputs[0]

    with pytest.raises(SegmentBadAnswerError):
        parse_segmentation(incomplete)
    with pytest.raises(SegmentBadAnswerError):
        parse_segmentation(pb.ModelInferResponse(outputs=answer(raw=False).outputs))
