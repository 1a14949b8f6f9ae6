"""TorchServe handler for DeepLabv3 semantic segmentation.

The logic is a chain of pure functions, unit-tested without a model server:

    bytes -> decode_image -> to_tensor -> (TorchScript forward, batched) -> logits_to_mask
          -> encode_png + class_stats -> response

``SegmentationHandler`` only wires them into TorchServe's BaseHandler. Bad items are answered with a 4xx
status and a JSON body ``{"error", "code", "status", "model"}`` over REST, and with a non-OK gRPC status over
gRPC (see SegmentationHandler for how, and for the one case where gRPC still gets OK with the error body).
An input named ``describe`` answers the model's identity alone (no image, no forward).

torch-model-archiver flattens this file and image_policy.py (packed as an extra file by training.export) into
the archive root, so besides image_policy it imports nothing from this repository, and it never imports
torchvision (the worker must not need it).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageFile, ImageOps, PngImagePlugin

try:  # in the repository
    from seg_handler import image_policy
except ImportError:  # in a TorchServe worker: torch-model-archiver flattened both files into the archive root
    import image_policy  # type: ignore[no-redef,import-not-found]

logger = logging.getLogger(__name__)

# The formats, the pixel limit and the typed rejection live in image_policy, shared with the board's upload
# check; these names stay for the handler's callers.
ImageRejectedError = image_policy.ImageRejectedError
ALLOWED_FORMATS = image_policy.OPEN_FORMATS
DEFAULT_MAX_PIXELS = image_policy.MAX_PIXELS
DEFAULT_RESIZE = 520
# Resize(520) alone would turn a 4000x8 strip into 260000x520; cap the long side like torchvision's max_size.
DEFAULT_MAX_SIZE = 2 * DEFAULT_RESIZE
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Upsampling works on horizontal strips so a 40 MP mask never needs 21 full-size float planes at once.
_UPSAMPLE_ELEMENTS_PER_STRIP = 16_000_000

Mask = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class ModelInfo:
    """What every answer says about the model that produced it (from model-meta.json)."""

    arch: str
    weights: str
    sha256: str | None  # of the weights file the archive was built from (None: random weights)
    untrained: bool
    # From model-meta.json; empty for an archive without it, named from the logits at the first forward.
    class_names: tuple[str, ...] = ()
    input_size: int | None = None
    # SHA-256 of the TorchScript program served: the exact identity of the model (re-tagging compares it).
    archive_sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "weights": self.weights,
            "sha256": self.sha256,
            "untrained": self.untrained,
            "archive_sha256": self.archive_sha256,
        }


@dataclass(frozen=True)
class HandlerSettings:
    """Preprocessing and limits; read from the ``handler:`` section of model-config.yaml."""

    resize: int = DEFAULT_RESIZE
    max_size: int = DEFAULT_MAX_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS
    # torch intra-op threads of the worker; 0 keeps torch's default (one per physical core).
    torch_threads: int = 0


# ------------------------------------------------------------------------------------------ pure functions


def decode_image(data: bytes | bytearray, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``data`` into an RGB image as displayed (EXIF orientation applied, alpha over white).

    The header checks are image_policy's (the board's upload check runs the same ones). Raises
    ImageRejectedError: 400 for empty input, non-images, truncated or corrupt files (any bad PNG chunk CRC
    included) and zero dimensions; 413 for images over ``max_pixels`` (Pillow's bomb guard stays on); 415 for
    recognised formats we do not take (HEIC, ICO, ...).
    """
    # Truncated files must fail, never be padded with grey.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = image_policy.open_image(data, max_pixels)
        try:
            img.seek(0)  # GIF/TIFF/WebP: the first frame
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejectedError(413, "too_large", f"image exceeds the pixel limit: {exc}") from exc
        except Exception as exc:
            raise ImageRejectedError(400, "corrupt", f"truncated or corrupt image data: {exc}") from exc
    shown: Image.Image = img
    try:
        shown = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not cost the user the picture
        logger.warning("ignoring unreadable EXIF orientation")
    rgb = _to_rgb(shown)
    if rgb.width <= 0 or rgb.height <= 0:
        raise ImageRejectedError(400, "zero_size", "image has zero dimensions")
    return rgb


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited over white, 16-bit is scaled."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(arr / 257.0, 0, 255).round().astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        arr = np.nan_to_num(arr * scale).real
        return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def network_size(
    width: int, height: int, resize: int = DEFAULT_RESIZE, max_size: int = DEFAULT_MAX_SIZE
) -> tuple[int, int]:
    """(width, height) for the network: shorter side to ``resize``, longer side capped at ``max_size``."""
    short, long = min(width, height), max(width, height)
    new_short, new_long = resize, max(1, round(resize * long / short))
    if new_long > max_size:
        new_short, new_long = max(1, round(max_size * short / long)), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


def to_tensor(
    img: Image.Image, resize: int = DEFAULT_RESIZE, max_size: int = DEFAULT_MAX_SIZE
) -> torch.Tensor:
    """RGB image -> float32 [3, h, w], ImageNet-normalised, resized like torchvision's eval preset."""
    size = network_size(img.width, img.height, resize, max_size)
    resized = img if img.size == size else img.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    normalised = ((pixels - mean) / std).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def _linear_source(out_size: int, in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices and weights of bilinear interpolation (align_corners=False), as F.interpolate computes."""
    scale = in_size / out_size
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0.0)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = (src - lo.to(torch.float64)).to(torch.float32)
    return lo, hi, frac


def logits_to_mask(logits: torch.Tensor, width: int, height: int) -> Mask:
    """Logits [C, h, w] -> uint8 class-index mask [height, width], upsampled bilinearly before the argmax.

    Raises ValueError for logits that are not 3-D or have more than 256 classes.
    """
    if logits.dim() != 3:
        raise ValueError(f"expected logits [C, h, w], got {tuple(logits.shape)}")
    num_classes, in_h, in_w = logits.shape
    if num_classes > 256:
        raise ValueError(f"{num_classes} classes do not fit a uint8 mask")
    logits = logits.float()
    if (in_h, in_w) == (height, width):
        return _class_of_max(logits)
    y_lo, y_hi, y_frac = _linear_source(height, in_h)
    x_lo, x_hi, x_frac = _linear_source(width, in_w)
    mask = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _UPSAMPLE_ELEMENTS_PER_STRIP // max(1, num_classes * max(width, in_w)))
    x_frac_row = x_frac.view(1, 1, -1)
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        fy = y_frac[start:stop].view(1, -1, 1)
        strip = (
            logits.index_select(1, y_lo[start:stop]) * (1 - fy)
            + logits.index_select(1, y_hi[start:stop]) * fy
        )
        strip = strip.index_select(2, x_lo) * (1 - x_frac_row) + strip.index_select(2, x_hi) * x_frac_row
        mask[start:stop] = _class_of_max(strip)
    return mask


def _class_of_max(logits: torch.Tensor) -> Mask:
    # max(dim=0).indices is several times faster than argmax(dim=0) over a [C, H, W] CPU tensor.
    return torch.max(logits, dim=0).indices.to(torch.uint8).numpy()


voc_palette = image_policy.voc_palette


@functools.cache
def _voc_palette_bytes() -> bytes:
    # Built once per worker, not once per encoded mask.
    return bytes(voc_palette())


def encode_png(mask: Mask, text: Mapping[str, str] | None = None) -> bytes:
    """Mask [H, W] uint8 -> palette PNG (VOC colours) whose pixel values are the class indices.

    ``text`` goes into tEXt chunks (the model identity, so a saved mask says where it came from).
    """
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 mask, got {mask.dtype} {mask.shape}")
    img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
    img.putpalette(_voc_palette_bytes())
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False, compress_level=6, pnginfo=info)
    return out.getvalue()


def generic_class_names(num_classes: int) -> tuple[str, ...]:
    """``class_0`` .. ``class_{n-1}``: names for a model whose archive does not name its classes."""
    return tuple(f"class_{i}" for i in range(num_classes))


def class_stats(mask: Mask, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Classes present in ``mask``, pixels descending: [{index, name, pixels, fraction}].

    An index beyond ``class_names`` is named ``class_<index>``.
    """
    counts = np.bincount(mask.ravel(), minlength=len(class_names))
    total = int(mask.size)
    present = [(int(n), i) for i, n in enumerate(counts.tolist()) if n > 0]
    present.sort(key=lambda item: (-item[0], item[1]))
    return [
        {
            "index": i,
            "name": class_names[i] if i < len(class_names) else f"class_{i}",
            "pixels": n,
            "fraction": round(n / total, 6) if total else 0.0,
        }
        for n, i in present
    ]


def mask_response(mask: Mask, model: ModelInfo) -> dict[str, Any]:
    """The JSON answer for one image: size, present classes, the mask as base64 PNG and the model identity."""
    png = encode_png(mask, {"model": json.dumps(model.as_dict())})
    return {
        "width": int(mask.shape[1]),
        "height": int(mask.shape[0]),
        "classes": class_stats(mask, model.class_names),
        "mask": base64.b64encode(png).decode("ascii"),
        "model": model.as_dict(),
    }


def read_model_meta(path: str) -> ModelInfo:
    """ModelInfo from model-meta.json; a missing file gives an 'unknown' identity, not a dead worker."""
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except FileNotFoundError:
        logger.warning("%s not found; answers will report an unknown model", path)
        return ModelInfo(arch="unknown", weights="unknown", sha256=None, untrained=True)
    names = meta.get("class_names") or generic_class_names(int(meta.get("num_classes") or 0))
    return ModelInfo(
        arch=str(meta.get("arch", "unknown")),
        weights=str(meta.get("weights", "unknown")),
        sha256=meta.get("sha256"),
        untrained=bool(meta.get("untrained", meta.get("sha256") is None)),
        class_names=tuple(str(n) for n in names),
        input_size=int(meta["input_size"]) if meta.get("input_size") else None,
        # Archives exported before archive_sha256 existed carry the same hash as torchscript_sha256.
        archive_sha256=meta.get("archive_sha256") or meta.get("torchscript_sha256"),
    )


def handler_settings(section: Mapping[str, Any], input_size: int | None) -> HandlerSettings:
    """Settings from model-config.yaml's ``handler:`` section; the shorter-side size defaults to the
    archive's ``input_size`` (model-meta.json), the long-side cap to twice that. The pixel limit is
    image_policy's, never the archive's: the board refuses uploads over the same limit."""
    resize = int(section.get("resize") or input_size or DEFAULT_RESIZE)
    if "max_pixels" in section:
        logger.warning("ignoring handler.max_pixels in model-config.yaml; the limit is image_policy's")
    threads = int(section.get("torch_threads") or 0)
    if threads < 0:
        raise ValueError(f"handler.torch_threads must be >= 0, got {threads}")
    return HandlerSettings(
        resize=resize, max_size=int(section.get("max_size") or 2 * resize), torch_threads=threads
    )


def response_format(item: Mapping[str, Any], accept: str | None) -> str:
    """'json' or 'png' from the ``format`` input, else the Accept header; raises ImageRejectedError."""
    value = item.get("format")
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    if value is None:
        return "png" if accept is not None and accept.strip().lower().startswith("image/png") else "json"
    fmt = str(value).strip().lower()
    if fmt not in ("json", "png"):
        raise ImageRejectedError(400, "bad_format", f"format must be 'json' or 'png', got {fmt[:32]!r}")
    return fmt


def request_bytes(item: Mapping[str, Any]) -> bytes | bytearray:
    """The image bytes of one request item: input ``data`` (multipart, gRPC) or the raw REST ``body``."""
    value = item.get("data", item.get("body"))
    if value is None:
        raise ImageRejectedError(400, "empty", "no 'data' input and no request body")
    if isinstance(value, str):
        raise ImageRejectedError(400, "not_an_image", "got text, not image bytes")
    if isinstance(value, dict | list):
        raise ImageRejectedError(400, "not_an_image", "got JSON, not image bytes")
    if not isinstance(value, bytes | bytearray):
        raise ImageRejectedError(400, "not_an_image", f"got {type(value).__name__}, not image bytes")
    return value


def is_describe_request(item: Mapping[str, Any]) -> bool:
    """A request for the model's identity alone: an input named ``describe`` (gRPC input, multipart field)
    or a JSON body with a ``describe`` key; it carries no image and runs no forward."""
    body = item.get("body")
    return "describe" in item or (isinstance(body, Mapping) and "describe" in body)


def is_grpc_request(headers: Mapping[str, Any]) -> bool:
    """True for a request that came over TorchServe's gRPC API.

    The worker sees one header dict per request: per-input content types (dicts, under the input's name) and,
    for REST only, the HTTP request headers (strings). gRPC requests carry no request-level headers.
    """
    return not any(isinstance(value, str | bytes | bytearray) for value in headers.values())


# ------------------------------------------------------------------------------------------ TorchServe wiring

try:  # the worker has ts; unit tests of the pure functions do not need it
    from ts.torch_handler.base_handler import BaseHandler
    from ts.utils.util import PredictionException
except ImportError:  # pragma: no cover - only without torchserve installed
    BaseHandler = object

    class PredictionException(Exception):  # type: ignore[no-redef]  # noqa: N818 - TorchServe's name
        def __init__(self, message: str, error_code: int = 500) -> None:
            super().__init__(message)
            self.message = message
            self.error_code = error_code


def reason_phrase(message: str, limit: int = 200) -> str:
    """``message`` as an HTTP reason phrase: its first line, visible ASCII only, at most ``limit`` characters.
    TorchServe's frontend refuses a phrase with a line break by stopping the worker, and a model's error (a
    TorchScript traceback) has several lines; the full message stays in the JSON body."""
    first = message.strip().splitlines()[0] if message.strip() else "error"
    printable = "".join(c if " " <= c <= "~" else "?" for c in first)
    return printable[:limit]


@dataclass
class _Item:
    index: int
    grpc: bool = False
    fmt: str = "json"
    width: int = 0
    height: int = 0
    tensor: torch.Tensor | None = None
    answer: bytes | str | None = None
    rejected: ImageRejectedError | None = None


class SegmentationHandler(BaseHandler):  # type: ignore[misc]
    """Thin BaseHandler subclass: loads TorchScript + model-meta.json and wires the pure functions.

    Statuses. TorchServe 0.12 drops a per-item status over gRPC (the caller sees OK) and only maps a
    PredictionException, which fails the whole batch, to a gRPC code. So a rejected item is answered:

    - over REST: per item, with its HTTP status (400/413/415/500) and the JSON body ``{error, code, status,
      model}``, whatever the batch;
    - over gRPC, alone in its batch: by raising PredictionException("<code>: <message>", status), which the
      caller sees as INVALID_ARGUMENT (400), RESOURCE_EXHAUSTED (413), FAILED_PRECONDITION (415) or
      INTERNAL (500);
    - over gRPC, sharing a batch with others: OK with the JSON error body, as before, because raising would
      fail the valid requests of the batch too. clients/segment.py reads both forms.

    model-config.yaml sets batchSize 1, so with the default configuration every gRPC rejection is a non-OK
    status. On this CPU a batch of 4 takes as long as 4 single forwards, so batching buys no throughput; on a
    GPU it does (one kernel launch for N images): raise batchSize there, and gRPC callers whose bad image
    shares a batch get the OK-with-error-body form. Valid requests never fail because of a bad neighbour.
    """

    def __init__(self) -> None:
        super().__init__()
        self.settings = HandlerSettings()
        self.model_info = ModelInfo(arch="unknown", weights="unknown", sha256=None, untrained=True)

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = properties.get("model_dir")
        use_cuda = torch.cuda.is_available() and properties.get("gpu_id") is not None
        self.device = torch.device(f"cuda:{properties['gpu_id']}" if use_cuda else "cpu")
        serialized = context.manifest["model"]["serializedFile"]
        self.model = torch.jit.load(  # type: ignore[no-untyped-call]
            os.path.join(model_dir, serialized), map_location=self.device
        )
        self.model.eval()
        self.model_info = read_model_meta(os.path.join(model_dir, "model-meta.json"))
        section = (getattr(context, "model_yaml_config", None) or {}).get("handler", {}) or {}
        self.settings = handler_settings(section, self.model_info.input_size)
        # Pillow's guard stays on at our limit: it warns above it (an error in decode_image), refuses 2x.
        Image.MAX_IMAGE_PIXELS = self.settings.max_pixels
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.initialized = True
        logger.info(
            "loaded %s (%s, archive sha256 %s) with %s; torch threads %d",
            self.model_info.arch,
            self.model_info.weights,
            self.model_info.archive_sha256,
            self.settings,
            torch.get_num_threads(),
        )

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes | str]:
        """Answer one batch; raises PredictionException for a lone gRPC request that is rejected."""
        self.context = context
        items = [self._prepare(i, item, context) for i, item in enumerate(data)]
        groups: dict[tuple[int, ...], list[_Item]] = {}
        for it in items:
            if it.answer is None and it.tensor is not None:
                groups.setdefault(tuple(it.tensor.shape), []).append(it)
        for group in groups.values():
            self._segment(group, context)
        if len(items) == 1 and items[0].grpc and items[0].rejected is not None:
            rejected = items[0].rejected
            raise PredictionException(f"{rejected.code}: {rejected.message}"[:500], rejected.status)
        return [it.answer if it.answer is not None else "" for it in items]

    def _prepare(self, index: int, item: dict[str, Any], context: Any) -> _Item:
        out = _Item(index=index, grpc=is_grpc_request(_headers(context, index)))
        try:
            if is_describe_request(item):
                # The identity, plus the class names (a mask's values, in order): what re-tagging and
                # filters need to know about the served model.
                described = {**self.model_info.as_dict(), "class_names": list(self.model_info.class_names)}
                out.answer = json.dumps({"model": described}, separators=(",", ":"))
                context.set_response_content_type(index, "application/json")
                return out
            out.fmt = response_format(item, _header(context, index, "accept"))
            img = decode_image(request_bytes(item), self.settings.max_pixels)
            out.width, out.height = img.size
            out.tensor = to_tensor(img, self.settings.resize, self.settings.max_size)
        except ImageRejectedError as exc:
            self._reject(out, exc, context)
        except Exception as exc:  # never let one item fail the batch or the worker
            logger.exception("unexpected error preparing item %d", index)
            self._reject(out, ImageRejectedError(400, "corrupt", f"cannot decode the image: {exc}"), context)
        return out

    def _segment(self, group: list[_Item], context: Any) -> None:
        try:
            batch = torch.stack([it.tensor for it in group if it.tensor is not None]).to(self.device)
            with torch.inference_mode():
                logits = self.model(batch)
            if isinstance(logits, dict):
                logits = logits["out"]
            logits = logits.cpu()
            if not self.model_info.class_names:
                self._name_classes_generically(int(logits.shape[1]))
        except Exception as exc:
            logger.exception("forward failed for a group of %d", len(group))
            for it in group:
                self._reject(
                    it, ImageRejectedError(500, "inference_failed", f"inference failed: {exc}"), context
                )
            return
        for it, item_logits in zip(group, logits, strict=True):
            try:
                mask = logits_to_mask(item_logits, it.width, it.height)
                if it.fmt == "png":
                    it.answer = encode_png(mask, {"model": json.dumps(self.model_info.as_dict())})
                    context.set_response_content_type(it.index, "image/png")
                else:
                    it.answer = json.dumps(mask_response(mask, self.model_info), separators=(",", ":"))
                    context.set_response_content_type(it.index, "application/json")
            except Exception as exc:
                logger.exception("postprocess failed for item %d", it.index)
                self._reject(
                    it, ImageRejectedError(500, "postprocess_failed", f"postprocess failed: {exc}"), context
                )
            finally:
                it.tensor = None

    def _name_classes_generically(self, num_classes: int) -> None:
        # Once per worker: afterwards model_info carries the names.
        logger.warning("the archive names no classes; answering class_0..class_%d", num_classes - 1)
        self.model_info = replace(self.model_info, class_names=generic_class_names(num_classes))

    def _reject(self, item: _Item, exc: ImageRejectedError, context: Any) -> None:
        body = {**exc.body(), "model": self.model_info.as_dict()}
        item.answer = json.dumps(body, separators=(",", ":"))
        item.tensor = None
        item.rejected = exc
        context.set_response_status(exc.status, reason_phrase(exc.message), item.index)
        context.set_response_content_type(item.index, "application/json")


_service: SegmentationHandler | None = None


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[bytes | str] | None:
    """TorchServe's module-level entry point (a module with several classes needs one): init, then batches."""
    global _service  # noqa: PLW0603 - one handler per worker process, created on TorchServe's first call
    if _service is None:
        _service = SegmentationHandler()
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)


def _headers(context: Any, index: int) -> Mapping[str, Any]:
    try:
        headers = context.get_all_request_header(index)
    except Exception:
        return {}
    return headers if isinstance(headers, Mapping) else {}


def _header(context: Any, index: int, name: str) -> str | None:
    """A REST request header, matched case-insensitively (gRPC requests carry none)."""
    for key, value in _headers(context, index).items():
        if str(key).lower() == name:
            if isinstance(value, bytes | bytearray):
                return bytes(value).decode("latin-1")
            return value if isinstance(value, str) else None
    return None
