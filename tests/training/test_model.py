"""build_model's weights sources, offline: files the tests put into a temporary TORCH_HOME cache."""

from __future__ import annotations

import hashlib
import logging
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch

from seg_handler.image_policy import VOC_CLASSES
from training.model import (
    WeightsError,
    backbone_weights_enum,
    build_model,
    cached_weights_path,
    file_sha256,
    matches_published_hash,
    pretrained_weights_enum,
    published_hash_prefix,
)

ARCH = "deeplabv3_mobilenet_v3_large"  # the small one; the loading paths are the same for every arch


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise urllib.error.URLError("network disabled by the test")


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME; downloads fail like they do offline."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    return home


def _equal_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_random_model_predicts_full_resolution_logits_and_is_marked_untrained() -> None:
    built = build_model(ARCH, num_classes=5, weights="random")

    with torch.inference_mode():
        out = built.model.eval()(torch.randn(2, 3, 67, 91))["out"]

    assert out.shape == (2, 5, 67, 91)
    assert built.provenance.source == "random" and built.provenance.untrained
    assert built.provenance.sha256 is None and built.provenance.weights_file is None
    assert built.class_names == ("class_0", "class_1", "class_2", "class_3", "class_4")


def test_default_class_names_are_the_21_voc_classes_background_first() -> None:
    built = build_model(ARCH, weights="random")

    assert built.class_names == VOC_CLASSES and len(VOC_CLASSES) == 21
    assert built.class_names[0] == "background" and built.class_names[15] == "person"


def test_unknown_arch_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown arch 'deeplabv3_vgg'"):
        build_model("deeplabv3_vgg")


def test_a_file_named_like_torchvisions_weights_is_a_checkpoint_unless_its_hash_matches(
    torch_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = build_model(ARCH, weights="random", aux_loss=True).model.state_dict()
    cached = cached_weights_path(pretrained_weights_enum(ARCH))
    assert cached == torch_home / "hub" / "checkpoints" / "deeplabv3_mobilenet_v3_large-fc3c493d.pth"
    cached.parent.mkdir(parents=True)
    torch.save(source, cached)  # random weights under torchvision's name: the name alone proves nothing

    with caplog.at_level(logging.WARNING, logger="training.model"):
        built = build_model(ARCH, weights="pretrained")

    sha256 = hashlib.sha256(cached.read_bytes()).hexdigest()
    assert not sha256.startswith("fc3c493d")
    assert (built.provenance.source, built.provenance.sha256) == ("checkpoint", sha256)
    assert not built.provenance.untrained and built.provenance.weights_file == cached.name
    assert "NOT those weights" in caplog.text and sha256 in caplog.text
    assert built.class_names == VOC_CLASSES
    expected = {k: v for k, v in source.items() if not k.startswith("aux_classifier.")}
    assert _equal_state(built.model.state_dict(), expected)  # the aux head is dropped unless asked for


def test_the_sha256_must_start_with_the_prefix_torchvision_publishes_in_the_name(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pth"
    torch.save(build_model(ARCH, weights="random").model.state_dict(), weights)
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert file_sha256(weights) == sha256
    assert matches_published_hash(sha256, f"deeplabv3_mobilenet_v3_large-{sha256[:8]}.pth")
    assert matches_published_hash(sha256, f"deeplabv3_resnet101_coco-{sha256[:12]}.pth")
    other = "0" * 8 if not sha256.startswith("0" * 8) else "f" * 8
    assert not matches_published_hash(sha256, f"deeplabv3_mobilenet_v3_large-{other}.pth")
    assert not matches_published_hash(sha256, "deeplabv3_mobilenet_v3_large.pth")  # nothing published
    assert published_hash_prefix("deeplabv3_resnet101_coco-586e9e4e.pth") == "586e9e4e"
    assert published_hash_prefix(cached_weights_path(pretrained_weights_enum(ARCH)).name) == "fc3c493d"


def test_a_weights_file_passed_by_path_keeps_its_kind_and_sha256_whatever_its_name(tmp_path: Path) -> None:
    named = tmp_path / "deeplabv3_mobilenet_v3_large-fc3c493d.pth"
    torch.save(build_model(ARCH, weights="random").model.state_dict(), named)
    built = build_model(ARCH, weights=named)
    assert built.provenance.source == "state_dict"
    assert built.provenance.sha256 == hashlib.sha256(named.read_bytes()).hexdigest()


def test_pretrained_with_other_class_count_keeps_backbone_and_reheads(torch_home: Path) -> None:
    source = build_model(ARCH, weights="random", aux_loss=True).model.state_dict()
    cached = cached_weights_path(pretrained_weights_enum(ARCH))
    cached.parent.mkdir(parents=True)
    torch.save(source, cached)

    built = build_model(ARCH, num_classes=4, weights="pretrained")

    state = built.model.state_dict()
    assert state["classifier.4.weight"].shape[0] == 4
    assert torch.equal(state["backbone.0.0.weight"], source["backbone.0.0.weight"])


def test_pretrained_without_file_or_network_says_where_to_put_the_file(torch_home: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        build_model(ARCH, weights="pretrained")

    message = str(caught.value)
    assert "deeplabv3_mobilenet_v3_large-fc3c493d.pth" in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "--weights random" in message and "imagenet-backbone" in message


def test_auto_falls_back_to_random_loudly(torch_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.model"):
        built = build_model(ARCH, weights="auto")

    assert built.provenance.source == "random" and built.provenance.untrained
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "RANDOMLY INITIALISED" in text and "untrained=true" in text
    assert len(text.splitlines()) >= 5  # a banner, not a line that scrolls by


def test_auto_uses_the_cached_pretrained_file(torch_home: Path) -> None:
    cached = cached_weights_path(pretrained_weights_enum(ARCH))
    cached.parent.mkdir(parents=True)
    torch.save(build_model(ARCH, weights="random", aux_loss=True).model.state_dict(), cached)

    built = build_model(ARCH, weights="auto")

    # A file the test wrote, so not torchvision's: used, and recorded as what it is.
    assert built.provenance.source == "checkpoint"
    assert not built.provenance.untrained


def test_imagenet_backbone_loads_the_cached_backbone_only(torch_home: Path) -> None:
    import torchvision

    backbone = torchvision.models.mobilenet_v3_large().state_dict()
    cached = cached_weights_path(backbone_weights_enum(ARCH))
    assert cached.name == "mobilenet_v3_large-8738ca79.pth"
    cached.parent.mkdir(parents=True)
    torch.save(backbone, cached)

    built = build_model(ARCH, num_classes=3, weights="imagenet-backbone")

    state = built.model.state_dict()
    assert torch.equal(state["backbone.0.0.weight"], backbone["features.0.0.weight"])
    assert state["classifier.4.weight"].shape[0] == 3
    assert built.provenance.source == "imagenet-backbone" and built.provenance.untrained


def test_imagenet_backbone_without_file_or_network_names_the_file(torch_home: Path) -> None:
    with pytest.raises(WeightsError, match=r"mobilenet_v3_large-8738ca79\.pth"):
        build_model(ARCH, weights="imagenet-backbone")


def test_plain_state_dict_file_with_dataparallel_prefix(tmp_path: Path) -> None:
    source = build_model(ARCH, num_classes=21, weights="random", aux_loss=True).model.state_dict()
    path = tmp_path / "deeplabv3-voc2012.pt"
    torch.save({f"module.{key}": value for key, value in source.items()}, path)

    built = build_model(ARCH, weights=path)

    assert built.provenance.source == "state_dict"
    assert built.provenance.weights_file == str(path)
    assert built.provenance.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not built.provenance.untrained
    assert built.class_names == VOC_CLASSES
    expected = {k: v for k, v in source.items() if not k.startswith("aux_classifier.")}
    assert _equal_state(built.model.state_dict(), expected)


def test_trainer_checkpoint_brings_its_class_names(tmp_path: Path) -> None:
    model = build_model(ARCH, num_classes=3, weights="random").model
    path = tmp_path / "checkpoint.pth"
    names = ["background", "cat", "dog"]
    torch.save(
        {"model": model.state_dict(), "arch": ARCH, "class_names": names, "epoch": 4, "args": {}}, path
    )

    built = build_model(ARCH, weights=path)

    assert built.provenance.source == "checkpoint"
    assert built.class_names == tuple(names)
    assert built.checkpoint is not None and built.checkpoint["epoch"] == 4


def test_checkpoint_of_another_arch_says_which(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    model = build_model(ARCH, num_classes=3, weights="random").model
    torch.save({"model": model.state_dict(), "arch": ARCH}, path)

    with pytest.raises(WeightsError, match=f"trained as {ARCH}, not deeplabv3_resnet50: pass --arch {ARCH}"):
        build_model("deeplabv3_resnet50", weights=path)


def test_state_dict_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"classifier.4.weight": torch.zeros(21, 256, 1, 1), "fc.weight": torch.zeros(2, 2)}, path)

    with pytest.raises(WeightsError, match="does not fit deeplabv3_mobilenet_v3_large with 21 classes"):
        build_model(ARCH, weights=path)


def test_missing_or_unreadable_weights_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="weights file not found"):
        build_model(ARCH, weights=tmp_path / "absent.pt")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match=r"cannot read .*garbage\.pt"):
        build_model(ARCH, weights=garbage)
