"""The shapes every layer reads: rows as storage hands them back (read-only protocols, met by Core result rows
and ORM rows alike), the attachment status, and the identity of a segmentation model. No SQLAlchemy and no
gRPC here, so that the transports and the use cases can share them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from seg_handler.image_policy import VOC_CLASSES


class AttachmentStatus(StrEnum):
    """Where an attachment is in tagging; stored as its name."""

    PENDING = "PENDING"
    TAGGED = "TAGGED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class ModelIdentity:
    """Which model labelled an attachment: architecture, weights, the checkpoint's and the exported
    program's SHA-256 (the latter names the exact model), and whether its weights were trained at all."""

    arch: str
    weights: str
    sha256: str | None
    archive_sha256: str | None
    untrained: bool

    @classmethod
    def from_answer(cls, model: Mapping[str, Any]) -> ModelIdentity:
        """From the ``model`` object of the handler's answer; what it leaves out reads as unknown."""
        return cls(
            arch=str(model.get("arch") or "unknown"),
            weights=str(model.get("weights") or "unknown"),
            sha256=str(model["sha256"]) if model.get("sha256") else None,
            archive_sha256=str(model["archive_sha256"]) if model.get("archive_sha256") else None,
            untrained=bool(model.get("untrained", True)),
        )


@dataclass(frozen=True)
class TagResult:
    """What the model said about one image: each class present as (name, fraction, pixels), the mask (a
    palette PNG of class indices at the image's size) and which model said it."""

    labels: Sequence[tuple[str, float, int]]
    mask_png: bytes
    model: ModelIdentity
    server: str = ""  # the address of the model server that answered, where several share the work


@dataclass(frozen=True)
class ServedModel:
    """The model the inference server serves now: its identity and the classes its masks index."""

    identity: ModelIdentity
    class_names: tuple[str, ...] = VOC_CLASSES

    @classmethod
    def from_answer(cls, model: Mapping[str, Any], class_names: Sequence[str] | None = None) -> ServedModel:
        """From a describe answer's ``model`` object (and its ``class_names``, when it sent them)."""
        names = class_names or model.get("class_names") or VOC_CLASSES
        return cls(ModelIdentity.from_answer(model), tuple(str(n) for n in names))


class UserRecord(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def admin(self) -> bool: ...
    @property
    def create_time(self) -> datetime: ...
    @property
    def version(self) -> int: ...


class PostRecord(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def user_id(self) -> int: ...
    @property
    def title(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def create_time(self) -> datetime: ...
    @property
    def update_time(self) -> datetime: ...


class CommentRecord(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def post_id(self) -> int: ...
    @property
    def user_id(self) -> int: ...
    @property
    def content(self) -> str: ...
    @property
    def create_time(self) -> datetime: ...
    @property
    def update_time(self) -> datetime: ...
