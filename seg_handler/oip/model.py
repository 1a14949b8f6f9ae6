"""The segmentation model as a KServe model: the TorchServe handler's pure functions around the ``.pt2``.

    bytes → decode_image → to_tensor → ExportedProgram forward → logits_to_mask → encode_png + class_stats

Every step is seg_handler/handler.py's (and image_policy's), so an image gets the same labels and the same
mask from both servers. The tensors and parameters are seg_handler/oip/contract.py's. A rejected image is
raised as the gRPC status TorchServe's gRPC gives it, with the details ``"<code>: <message>"``; KServe's
interceptor turns the exception into that status. Forwards run one at a time on a thread of their own (torch
uses every core for one), so the event loop keeps answering ServerReady and ModelReady while a forward runs.

Runs in the OIP server's virtual environment (KServe), never in the board's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from grpc_interceptor import exceptions as status
from kserve import Model
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from PIL import Image

from seg_handler import handler
from seg_handler.oip import contract

logger = logging.getLogger(__name__)

PROGRAM_FILE = "model.pt2"
META_FILE = "model-meta.json"
_DETAILS_MAX = 500
_REJECTIONS: dict[int, type[status.GrpcException]] = {
    400: status.InvalidArgument,
    413: status.ResourceExhausted,
    415: status.FailedPrecondition,
}


@dataclass(frozen=True)
class Segmented:
    """One image's answer: its displayed size, the mask as PNG and the classes present."""

    width: int
    height: int
    mask_png: bytes
    classes: list[dict[str, Any]]


def rejection(exc: handler.ImageRejectedError) -> status.GrpcException:
    """The gRPC status of a rejected image: the code TorchServe's gRPC gives the same HTTP status."""
    details = f"{exc.code}: {exc.message}"[:_DETAILS_MAX]
    return _REJECTIONS.get(exc.status, status.InvalidArgument)(details)


def _parameter(parameters: Any, name: str) -> Any:
    """A request parameter's value, from REST's dict or gRPC's InferParameter map alike."""
    if not parameters or name not in parameters:
        return None
    value = parameters[name]
    if isinstance(value, str | bool | int | float):
        return value
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


class SegmentationModel(Model):  # type: ignore[misc]
    """``name`` served from ``model_dir`` (model.pt2 + model-meta.json, as training.export writes them)."""

    def __init__(self, name: str, model_dir: Path, *, torch_threads: int = 0) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.torch_threads = torch_threads
        self.info = handler.ModelInfo(arch="unknown", weights="unknown", sha256=None, untrained=True)
        self.settings = handler.HandlerSettings()
        self._forward: Any = None
        self._forwards = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")

    def load(self) -> bool:
        """Load the ExportedProgram and the model's identity; raises OSError or RuntimeError if it cannot."""
        self.info = handler.read_model_meta(str(self.model_dir / META_FILE))
        self.settings = handler.handler_settings({}, self.info.input_size)
        # Pillow's guard stays on at our limit: it warns above it (an error in decode_image), refuses 2x.
        Image.MAX_IMAGE_PIXELS = self.settings.max_pixels
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        self._forward = torch.export.load(str(self.model_dir / PROGRAM_FILE)).module()
        self.ready = True
        logger.info(
            "loaded %s (%s, archive sha256 %s) from %s with %s; torch threads %d",
            self.info.arch,
            self.info.weights,
            self.info.archive_sha256,
            self.model_dir,
            self.settings,
            torch.get_num_threads(),
        )
        return True

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": contract.IMAGE, "datatype": "BYTES", "shape": [1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "datatype": datatype, "shape": [1 if name == contract.MASK else -1]}
            for name, datatype in contract.OUTPUTS
        ]

    async def predict(
        self, payload: InferRequest, headers: Mapping[str, str] | None = None, *_extra: Any
    ) -> InferResponse:
        """Segment the request's ``image`` (or describe the model); raises the gRPC status of a rejection."""
        if _parameter(payload.parameters, contract.DESCRIBE_PARAMETER):
            described = {**self.info.as_dict(), "class_names": list(self.info.class_names)}
            return InferResponse(
                response_id=payload.id or "",
                model_name=self.name,
                infer_outputs=[],
                parameters={contract.MODEL_PARAMETER: json.dumps(described, separators=(",", ":"))},
            )
        image = self._image(payload)
        answer = await asyncio.get_running_loop().run_in_executor(self._forwards, self.segment, image)
        return self._response(payload, answer)

    def _image(self, payload: InferRequest) -> bytes:
        found = [tensor for tensor in payload.inputs if tensor.name == contract.IMAGE]
        if len(found) != 1 or found[0].datatype != "BYTES":
            raise status.InvalidArgument(f"empty: expected one BYTES input named {contract.IMAGE!r}")
        data = found[0].data
        value = data[0] if isinstance(data, list) and len(data) == 1 else None
        if isinstance(value, str):
            raise status.InvalidArgument("not_an_image: got text, not image bytes")
        if not isinstance(value, bytes | bytearray):
            raise status.InvalidArgument(f"empty: expected one image in {contract.IMAGE!r}, shape [1]")
        return bytes(value)

    def segment(self, data: bytes) -> Segmented:
        """The handler's pipeline on one image; raises a gRPC status exception for a rejection or failure."""
        try:
            img = handler.decode_image(data, self.settings.max_pixels)
        except handler.ImageRejectedError as exc:
            raise rejection(exc) from exc
        except Exception as exc:  # as the handler: an undecodable image is the image's fault
            logger.exception("unexpected error decoding an image")
            raise status.InvalidArgument(f"corrupt: cannot decode the image: {exc}"[:_DETAILS_MAX]) from exc
        tensor = handler.to_tensor(img, self.settings.resize, self.settings.max_size)
        try:
            with torch.inference_mode():
                logits = self._forward(tensor.unsqueeze(0))[0]
            if not self.info.class_names:
                names = handler.generic_class_names(int(logits.shape[0]))
                logger.warning("the model names no classes; answering class_0..class_%d", len(names) - 1)
                self.info = replace(self.info, class_names=names)
        except Exception as exc:
            logger.exception("forward failed")
            raise status.Internal(f"inference_failed: inference failed: {exc}"[:_DETAILS_MAX]) from exc
        try:
            mask = handler.logits_to_mask(logits, img.width, img.height)
            png = handler.encode_png(mask, {"model": json.dumps(self.info.as_dict())})
            classes = handler.class_stats(mask, self.info.class_names)
        except Exception as exc:
            logger.exception("postprocess failed")
            raise status.Internal(f"postprocess_failed: postprocess failed: {exc}"[:_DETAILS_MAX]) from exc
        return Segmented(img.width, img.height, png, classes)

    def _response(self, payload: InferRequest, answer: Segmented) -> InferResponse:
        count = len(answer.classes)
        outputs = [
            InferOutput(contract.MASK, [1], "BYTES", [answer.mask_png]),
            InferOutput(contract.CLASS_INDEX, [count], "INT32", [c["index"] for c in answer.classes]),
            InferOutput(contract.CLASS_NAME, [count], "BYTES", [c["name"].encode() for c in answer.classes]),
            InferOutput(contract.CLASS_PIXELS, [count], "INT64", [c["pixels"] for c in answer.classes]),
            InferOutput(contract.CLASS_FRACTION, [count], "FP64", [c["fraction"] for c in answer.classes]),
        ]
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=outputs,
            parameters={
                contract.MODEL_PARAMETER: json.dumps(self.info.as_dict(), separators=(",", ":")),
                contract.WIDTH_PARAMETER: answer.width,
                contract.HEIGHT_PARAMETER: answer.height,
            },
        )

    def stop(self) -> None:
        super().stop()
        self._forwards.shutdown(wait=False)
