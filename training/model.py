"""build_model(arch, num_classes, weights) over torchvision.models.segmentation, with recorded provenance.

Weights sources (one explicit option, never a silent fallback):

- ``pretrained``: torchvision's COCO_WITH_VOC_LABELS weights through its weights enum and the TORCH_HOME cache
  (offline once the file is in ``$TORCH_HOME/hub/checkpoints/``).

Provenance is checked, not taken from a file name: weights are recorded as ``pretrained:<enum>`` only when the
file's SHA-256 starts with the hash prefix torchvision publishes in its file name (e.g. ``586e9e4e`` in
``deeplabv3_resnet101_coco-586e9e4e.pth``). torch.hub checks that prefix only while downloading, so a file put
into the cache by hand, or any other file, is recorded as a ``checkpoint`` with its own SHA-256.
- ``imagenet-backbone``: ImageNet backbone only, the rest randomly initialised (training from scratch).
- a path: a checkpoint written by ``training.train`` or a plain state_dict file.
- ``random``: everything randomly initialised (seed the RNG first for reproducibility).
- ``auto``: ``pretrained`` when the file is cached or downloadable, else ``random`` with a loud warning.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from seg_handler.image_policy import VOC_CLASSES

logger = logging.getLogger(__name__)

ARCHS = ("deeplabv3_resnet101", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large")
DEFAULT_ARCH = "deeplabv3_resnet101"
WEIGHT_CHOICES = ("auto", "pretrained", "imagenet-backbone", "random")


# Without a timeout urllib waits forever on a black-holed network; a download this slow fails anyway.
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0


class WeightsError(RuntimeError):
    """The requested weights cannot be loaded; the message says why and what to do instead."""


@dataclass(frozen=True)
class Provenance:
    """Where a model's weights came from, recorded in checkpoints and in the exported archive's metadata."""

    # "pretrained:COCO_WITH_VOC_LABELS_V1" (verified against torchvision's published hash), "checkpoint",
    # "state_dict", "imagenet-backbone", "random"
    source: str
    weights_file: str | None
    sha256: str | None
    untrained: bool


@dataclass
class BuiltModel:
    """A model together with its architecture, class names and provenance."""

    model: nn.Module
    arch: str
    class_names: tuple[str, ...]
    provenance: Provenance
    checkpoint: dict[str, Any] | None = None  # the trainer checkpoint it came from, if any

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class SegmentationLogits(nn.Module):
    """Inference wrapper: normalised image batch → the ``out`` logits only (what training.export scripts).

    It lives here, not in export.py, because TorchScript records the class's qualified name: defined in a
    module that also runs as ``python -m``, it would be ``__main__.…`` there and change the file's hash.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]  # type: ignore[no-any-return]


def _segmentation_api() -> Any:
    import torchvision.models.segmentation as seg

    return seg


def _constructor(arch: str) -> Callable[..., nn.Module]:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    fn: Callable[..., nn.Module] = getattr(_segmentation_api(), arch)
    return fn


def pretrained_weights_enum(arch: str) -> Any:
    """torchvision's COCO_WITH_VOC_LABELS_V1 weights enum member for ``arch``."""
    seg = _segmentation_api()
    enums = {
        "deeplabv3_resnet101": seg.DeepLabV3_ResNet101_Weights,
        "deeplabv3_resnet50": seg.DeepLabV3_ResNet50_Weights,
        "deeplabv3_mobilenet_v3_large": seg.DeepLabV3_MobileNet_V3_Large_Weights,
    }
    if arch not in enums:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return enums[arch].COCO_WITH_VOC_LABELS_V1


def backbone_weights_enum(arch: str) -> Any:
    """torchvision's ImageNet backbone weights enum member used by ``arch`` (the constructors' default)."""
    import torchvision.models as tvm

    enums = {
        "deeplabv3_resnet101": tvm.ResNet101_Weights,
        "deeplabv3_resnet50": tvm.ResNet50_Weights,
        "deeplabv3_mobilenet_v3_large": tvm.MobileNet_V3_Large_Weights,
    }
    if arch not in enums:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return enums[arch].IMAGENET1K_V1


def cached_weights_path(weights_enum: Any) -> Path:
    """Where torch.hub caches (and looks for) the file of a torchvision weights enum member."""
    filename = os.path.basename(urlparse(str(weights_enum.url)).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def published_hash_prefix(filename: str) -> str | None:
    """The SHA-256 prefix torchvision publishes in a weights file name (``…-586e9e4e.pth``), or None."""
    found = torch.hub.HASH_REGEX.search(filename)
    return found.group(1) if found and len(found.group(1)) >= 8 else None


def matches_published_hash(sha256: str, published_filename: str) -> bool:
    """True when ``sha256`` starts with the hash prefix published in ``published_filename``."""
    prefix = published_hash_prefix(published_filename)
    return prefix is not None and sha256.startswith(prefix)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _download_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _unavailable_message(what: str, weights_enum: Any, exc: BaseException) -> str:
    path = cached_weights_path(weights_enum)
    return (
        f"could not load {what} weights: {type(exc).__name__}: {exc}\n"
        f"  file:   {path.name}\n"
        f"  url:    {weights_enum.url}\n"
        f"  put the file here to work offline: {path.parent}/ (set TORCH_HOME to change the cache root)\n"
        f"  other options: --weights random | auto | imagenet-backbone | /path/to/checkpoint-or-state_dict.pt"
    )


def _build_pretrained(arch: str, aux_loss: bool) -> tuple[nn.Module, Provenance]:
    weights = pretrained_weights_enum(arch)
    try:
        with _download_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
            # aux_loss=None: torchvision turns the aux head on for these weights (they contain it).
            model = _constructor(arch)(weights=weights, weights_backbone=None, aux_loss=None)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
        raise WeightsError(_unavailable_message("pretrained", weights, exc)) from exc
    path = cached_weights_path(weights)
    if not aux_loss:
        model.aux_classifier = None  # type: ignore[assignment]
    return model, _checked_provenance(path, weights, otherwise="checkpoint", weights_file=path.name)


def _checked_provenance(path: Path, weights: Any, *, otherwise: str, weights_file: str) -> Provenance:
    """``pretrained:<enum>`` when ``path`` is torchvision's published file for ``weights`` (its name, and a
    SHA-256 starting with the prefix in that name); else ``otherwise`` with the file's own SHA-256 (loudly
    when the name alone matched)."""
    published = cached_weights_path(weights).name
    sha256 = file_sha256(path) if path.is_file() else None
    named_alike = path.name == published
    if named_alike and sha256 is not None and matches_published_hash(sha256, published):
        return Provenance(f"pretrained:{weights.name}", path.name, sha256, untrained=False)
    if named_alike:
        _loud_warning(
            [
                f"{path} is named like torchvision's {weights.name} weights, but its sha256",
                f"{sha256} does not start with the published {published_hash_prefix(published)}:",
                f"these are NOT those weights. Recorded as a {otherwise} with its own sha256.",
            ]
        )
    return Provenance(otherwise, weights_file, sha256, untrained=False)


def _build_imagenet_backbone(arch: str, num_classes: int, aux_loss: bool) -> tuple[nn.Module, Provenance]:
    weights = backbone_weights_enum(arch)
    try:
        with _download_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
            model = _constructor(arch)(
                weights=None, weights_backbone=weights, num_classes=num_classes, aux_loss=aux_loss
            )
    except (OSError, RuntimeError, ValueError) as exc:
        raise WeightsError(_unavailable_message("ImageNet backbone", weights, exc)) from exc
    # The segmentation head is random: as a served model this is untrained (no weights file of ours).
    return model, Provenance(source="imagenet-backbone", weights_file=None, sha256=None, untrained=True)


def _build_random(arch: str, num_classes: int, aux_loss: bool) -> tuple[nn.Module, Provenance]:
    model = _constructor(arch)(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss
    )
    return model, Provenance(source="random", weights_file=None, sha256=None, untrained=True)


def _loud_warning(lines: list[str]) -> None:
    bar = "!" * 78
    logger.warning("\n%s\n%s\n%s", bar, "\n".join(f"!! {line}" for line in lines), bar)


def _replace_classifier_outputs(model: nn.Module, num_classes: int) -> None:
    """Swap the last 1x1 conv of the head (and aux head) for ``num_classes`` outputs, for fine-tuning."""
    for head_name in ("classifier", "aux_classifier"):
        head = getattr(model, head_name, None)
        if head is None:
            continue
        last = head[-1]
        assert isinstance(last, nn.Conv2d)
        if last.out_channels != num_classes:
            head[-1] = nn.Conv2d(last.in_channels, num_classes, kernel_size=1)


def _load_weights_file(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}\n"
            f"  --weights takes one of {', '.join(WEIGHT_CHOICES)} or a path to a checkpoint/state_dict file"
        )
    try:
        # torchvision's reference trainer stores argparse.Namespace in its checkpoints; allow just that.
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types; all mean "not a weights file we can read"
        raise WeightsError(
            f"cannot read {path} as a checkpoint or state_dict (only tensors and plain containers are "
            f"loaded, never pickled code): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"{path} holds a {type(loaded).__name__}, not a checkpoint or state_dict")
    return loaded


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return dict(state)


def _num_classes_in(state: Mapping[str, Any], path: Path) -> int:
    weight = state.get("classifier.4.weight")
    if not isinstance(weight, torch.Tensor):
        raise WeightsError(
            f"{path} has no 'classifier.4.weight' tensor: not a torchvision DeepLabv3 state_dict "
            f"(first keys: {list(state)[:5]})"
        )
    return int(weight.shape[0])


def _build_from_file(arch: str, path: Path, aux_loss: bool) -> BuiltModel:
    loaded = _load_weights_file(path)
    checkpoint: dict[str, Any] | None = None
    if isinstance(loaded.get("model"), Mapping):
        checkpoint = dict(loaded)
        state = _strip_prefix(loaded["model"], "module.")
        source = "checkpoint"
        recorded_arch = checkpoint.get("arch")
        args = checkpoint.get("args")
        if recorded_arch is None and args is not None:
            recorded_arch = args.get("arch") if isinstance(args, Mapping) else getattr(args, "model", None)
        if isinstance(recorded_arch, str) and recorded_arch in ARCHS and recorded_arch != arch:
            raise WeightsError(
                f"{path} was trained as {recorded_arch}, not {arch}: pass --arch {recorded_arch}"
            )
    else:
        state = _strip_prefix(loaded, "module.")
        source = "state_dict"
    num_classes = _num_classes_in(state, path)
    has_aux = any(key.startswith("aux_classifier.") for key in state)
    model = _constructor(arch)(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss
    )
    if not aux_loss:
        state = {key: value for key, value in state.items() if not key.startswith("aux_classifier.")}
    result = model.load_state_dict(state, strict=False)
    missing = [
        key for key in result.missing_keys if not (aux_loss and not has_aux and key.startswith("aux_"))
    ]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{path} does not fit {arch} with {num_classes} classes: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]})"
        )
    if aux_loss and not has_aux:
        logger.info("%s has no aux head; the aux classifier starts randomly initialised", path)

    names = checkpoint.get("class_names") if checkpoint else None
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        class_names = tuple(str(name) for name in names)
    elif num_classes == len(VOC_CLASSES):
        class_names = VOC_CLASSES
    else:
        class_names = tuple(f"class_{index}" for index in range(num_classes))
        logger.warning("%s carries no class names; using %s..", path, ", ".join(class_names[:3]))
    provenance = _checked_provenance(
        path, pretrained_weights_enum(arch), otherwise=source, weights_file=str(path)
    )
    return BuiltModel(model, arch, class_names, provenance, checkpoint)


def build_model(
    arch: str = DEFAULT_ARCH,
    num_classes: int = len(VOC_CLASSES),
    weights: str | Path = "random",
    *,
    aux_loss: bool = False,
    class_names: tuple[str, ...] | None = None,
) -> BuiltModel:
    """Build a torchvision DeepLabv3 ``arch`` with weights from ``weights`` (see the module docstring).

    ``num_classes`` applies to random/imagenet-backbone (and re-heads pretrained weights for fine-tuning); a
    checkpoint or state_dict brings its own. The model is returned in train mode, on the CPU.

    Raises:
        ValueError: unknown ``arch``.
        WeightsError: the weights cannot be loaded (the message names the file, cache folder and options).
    """
    _constructor(arch)  # validate arch before any download
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    default_names = class_names or (
        VOC_CLASSES if num_classes == len(VOC_CLASSES) else tuple(f"class_{i}" for i in range(num_classes))
    )
    choice = str(weights)
    if choice == "auto":
        try:
            model, provenance = _build_pretrained(arch, aux_loss)
        except WeightsError as exc:
            _loud_warning(
                [
                    "NO PRETRAINED WEIGHTS: falling back to a RANDOMLY INITIALISED model (--weights auto).",
                    "Its predictions are meaningless; the archive metadata says untrained=true.",
                    *str(exc).splitlines(),
                ]
            )
            model, provenance = _build_random(arch, num_classes, aux_loss)
            return BuiltModel(model, arch, default_names, provenance)
        if num_classes != len(VOC_CLASSES):
            _replace_classifier_outputs(model, num_classes)
        return BuiltModel(model, arch, default_names, provenance)
    if choice == "pretrained":
        model, provenance = _build_pretrained(arch, aux_loss)
        if num_classes != len(VOC_CLASSES):
            _replace_classifier_outputs(model, num_classes)
        return BuiltModel(model, arch, default_names, provenance)
    if choice == "imagenet-backbone":
        model, provenance = _build_imagenet_backbone(arch, num_classes, aux_loss)
        return BuiltModel(model, arch, default_names, provenance)
    if choice == "random":
        model, provenance = _build_random(arch, num_classes, aux_loss)
        return BuiltModel(model, arch, default_names, provenance)
    return _build_from_file(arch, Path(choice).expanduser(), aux_loss)
