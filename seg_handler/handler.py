"""TorchServe handler for DeepLabv3 semantic segmentation.

The logic is a chain of pure functions, unit-tested without a model server:

    bytes -> decode_image -> to_tensor -> (TorchScript forward, batched) -> logits_to_mask
          -> encode_png + class_stats -> response

``SegmentationHandler`` only wires them into TorchServe's BaseHandler. Bad items are answered one by one
with a 4xx status and a JSON body ``{"error", "code", "status", "model"}``: TorchServe's gRPC side drops
per-item status codes (it answers OK with the body), so the body is what gRPC clients must look at.

This file is flattened into the archive root by torch-model-archiver, so it imports nothing from this
repository and never imports torchvision (the worker must not need it).
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
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Formats accepted by decode_image (Pillow's JPEG opener also takes the MPO files many phones write).
# Naming them keeps Pillow from guessing: its TGA reader, for one, accepts almost any bytes.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
DEFAULT_RESIZE = 520
# Resize(520) alone would turn a 4000x8 strip into 260000x520; cap the long side like torchvision's max_size.
DEFAULT_MAX_SIZE = 2 * DEFAULT_RESIZE
DEFAULT_MAX_PIXELS = 40_000_000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Upsampling works on horizontal strips so a 40 MP mask never needs 21 full-size float planes at once.
_UPSAMPLE_ELEMENTS_PER_STRIP = 16_000_000

Mask = npt.NDArray[np.uint8]


class ImageRejectedError(Exception):
    """A request item that cannot be segmented; ``status`` is the HTTP status, ``code`` a stable string."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code, "status": self.status}


@dataclass(frozen=True)
class ModelInfo:
    """What every answer says about the model that produced it (from model-meta.json)."""

    arch: str
    weights: str
    sha256: str | None
    untrained: bool
    # From model-meta.json; empty for an archive without it, named from the logits at the first forward.
    class_names: tuple[str, ...] = ()
    input_size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "weights": self.weights,
            "sha256": self.sha256,
            "untrained": self.untrained,
        }


@dataclass(frozen=True)
class HandlerSettings:
    """Preprocessing and limits; read from the ``handler:`` section of model-config.yaml."""

    resize: int = DEFAULT_RESIZE
    max_size: int = DEFAULT_MAX_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS


# ------------------------------------------------------------------------------------------ pure functions


def decode_image(data: bytes | bytearray, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``data`` into an RGB image as displayed (EXIF orientation applied, alpha over white).

    Raises ImageRejectedError: 400 for empty input, non-images, unsupported formats, truncated or corrupt
    files and zero dimensions; 413 for images over ``max_pixels`` (Pillow's bomb guard stays on).
    """
    if not isinstance(data, bytes | bytearray):
        raise ImageRejectedError(400, "not_an_image", f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageRejectedError(400, "empty", "the request carries no image bytes")
    # Truncated files must fail, never be padded with grey.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(bytes(data)), formats=ALLOWED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejectedError(413, "too_large", f"image exceeds the pixel limit: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise ImageRejectedError(
                400, "not_an_image", f"not a supported image ({', '.join(ALLOWED_FORMATS)})"
            ) from exc
        except Exception as exc:  # Pillow raises many types for malformed headers
            raise ImageRejectedError(400, "corrupt", f"cannot read the image header: {exc}") from exc
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageRejectedError(400, "zero_size", f"image has zero dimensions ({width}x{height})")
        if width * height > max_pixels:
            raise ImageRejectedError(
                413, "too_large", f"image has {width * height} pixels, the limit is {max_pixels}"
            )
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


def voc_palette(num_colors: int = 256) -> list[int]:
    """The PASCAL VOC colour map as a flat [r, g, b, ...] list of ``num_colors`` entries."""
    palette: list[int] = []
    for index in range(num_colors):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


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
    )


def handler_settings(section: Mapping[str, Any], input_size: int | None) -> HandlerSettings:
    """Settings from model-config.yaml's ``handler:`` section; the shorter-side size defaults to the
    archive's ``input_size`` (model-meta.json), the long-side cap to twice that."""
    resize = int(section.get("resize") or input_size or DEFAULT_RESIZE)
    return HandlerSettings(
        resize=resize,
        max_size=int(section.get("max_size") or 2 * resize),
        max_pixels=int(section.get("max_pixels") or DEFAULT_MAX_PIXELS),
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


# ------------------------------------------------------------------------------------------ TorchServe wiring

try:  # the worker has ts; unit tests of the pure functions do not need it
    from ts.torch_handler.base_handler import BaseHandler
except ImportError:  # pragma: no cover - only without torchserve installed
    BaseHandler = object


@dataclass
class _Item:
    index: int
    fmt: str = "json"
    width: int = 0
    height: int = 0
    tensor: torch.Tensor | None = None
    answer: bytes | str | None = None


class SegmentationHandler(BaseHandler):  # type: ignore[misc]
    """Thin BaseHandler subclass: loads TorchScript + model-meta.json and wires the pure functions."""

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
        self.initialized = True
        logger.info("loaded %s (%s) with %s", self.model_info.arch, self.model_info.weights, self.settings)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes | str]:
        self.context = context
        items = [self._prepare(i, item, context) for i, item in enumerate(data)]
        pending = [it for it in items if it.answer is None]
        groups: dict[tuple[int, ...], list[_Item]] = {}
        for it in pending:
            assert it.tensor is not None
            groups.setdefault(tuple(it.tensor.shape), []).append(it)
        for group in groups.values():
            self._segment(group, context)
        return [it.answer if it.answer is not None else "" for it in items]

    def _prepare(self, index: int, item: dict[str, Any], context: Any) -> _Item:
        out = _Item(index=index)
        try:
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
        context.set_response_status(exc.status, exc.message[:200], item.index)
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


def _header(context: Any, index: int, name: str) -> str | None:
    """A REST request header, matched case-insensitively (gRPC requests carry none)."""
    try:
        headers = context.get_all_request_header(index) or {}
    except Exception:
        return None
    for key, value in headers.items():
        if str(key).lower() == name:
            return bytes(value).decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)
    return None
