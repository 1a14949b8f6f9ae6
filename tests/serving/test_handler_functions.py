"""Unit tests of seg_handler.handler's pure functions and its batch wiring, without TorchServe."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling
from PIL import Image
from ts.utils.util import PredictionException

from seg_handler import handler as h
from seg_handler import image_policy
from tests.serving import corpus


@pytest.mark.parametrize("image", corpus.valid_images(), ids=lambda c: c.name)
def test_decode_image_accepts_every_format_and_mode_as_displayed_rgb(image: corpus.ValidImage) -> None:
    decoded = h.decode_image(image.data)
    assert decoded.mode == "RGB"
    assert decoded.size == (image.width, image.height)


@pytest.mark.parametrize("bad", corpus.bad_inputs(), ids=lambda c: c.name)
def test_decode_image_rejects_bad_input_with_4xx(bad: corpus.BadInput) -> None:
    with pytest.raises(h.ImageRejectedError) as info:
        h.decode_image(bad.data, max_pixels=40_000_000)
    assert info.value.status == bad.status
    body = info.value.body()
    assert set(body) >= {"error", "code"} and body["status"] == bad.status


def test_bad_corpus_has_at_least_30_inputs() -> None:
    assert len(corpus.bad_inputs()) >= 30


def test_exif_orientation_is_applied_to_pixels() -> None:
    arr = np.zeros((2, 3, 3), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0)  # red top-left, stored
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180
    data = corpus.encode(Image.fromarray(arr, "RGB"), "PNG", exif=exif.tobytes())
    shown = np.asarray(h.decode_image(data))
    assert shown.shape == (2, 3, 3)
    assert tuple(shown[1, 2]) == (255, 0, 0) and tuple(shown[0, 0]) == (0, 0, 0)


def test_exif_rotation_by_90_swaps_width_and_height() -> None:
    assert h.decode_image(corpus.exif_rotated_jpeg(40, 20, 6)).size == (20, 40)


def test_transparent_pixels_are_composited_over_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    shown = np.asarray(h.decode_image(corpus.encode(rgba, "PNG")))
    assert tuple(shown[0, 0]) == (255, 255, 255) and tuple(shown[0, 1]) == (10, 20, 30)


def test_16bit_png_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    shown = np.asarray(h.decode_image(corpus.encode(Image.fromarray(arr), "PNG")))
    assert shown[0, :, 0].tolist() == [0, 128, 255]


def test_pixel_limit_is_configurable_and_answers_413() -> None:
    data = corpus.encode(corpus.rgb(100, 100), "PNG")
    assert h.decode_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(h.ImageRejectedError) as info:
        h.decode_image(data, max_pixels=9_999)
    assert info.value.status == 413 and info.value.code == "too_large"


def test_pillow_bomb_guard_stays_on_and_answers_413(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Image.MAX_IMAGE_PIXELS is not None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(h.ImageRejectedError) as info:  # Pillow's warning, turned into an error
        h.decode_image(corpus.encode(corpus.rgb(40, 40), "PNG"), max_pixels=10**9)
    assert info.value.status == 413


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((520, 520), (520, 520)),
        ((1040, 520), (1040, 520)),
        ((100, 200), (520, 1040)),
        ((4000, 8), (1040, 2)),
        ((8, 4000), (2, 1040)),
        ((1, 1), (520, 520)),
        ((4000, 3000), (693, 520)),
    ],
)
def test_network_size_resizes_shorter_side_and_caps_longer(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert h.network_size(*size) == expected


def test_to_tensor_matches_torchvision_eval_preprocessing() -> None:
    tvf = pytest.importorskip("torchvision.transforms.functional")
    img = corpus.rgb(120, 80)
    ours = h.to_tensor(img, resize=64, max_size=1000)
    ref = tvf.normalize(
        tvf.to_tensor(tvf.resize(img, [64, 96], interpolation=tvf.InterpolationMode.BILINEAR)),
        mean=list(h.IMAGENET_MEAN),
        std=list(h.IMAGENET_STD),
    )
    assert ours.dtype == torch.float32 and ours.shape == (3, 64, 96)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("in_hw", "out_hw"),
    [((13, 17), (40, 31)), ((64, 64), (64, 64)), ((30, 20), (7, 5)), ((2, 130), (8, 4000))],
)
def test_logits_to_mask_equals_bilinear_upsample_then_argmax(
    in_hw: tuple[int, int], out_hw: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h, "_UPSAMPLE_ELEMENTS_PER_STRIP", 21 * 4000 * 3)  # force several strips
    logits = torch.randn(21, *in_hw, generator=torch.Generator().manual_seed(0))
    mask = h.logits_to_mask(logits, width=out_hw[1], height=out_hw[0])
    ref = F.interpolate(logits[None], size=out_hw, mode="bilinear", align_corners=False)[0].argmax(0)
    assert mask.shape == out_hw and mask.dtype == np.uint8
    # Float rounding may flip a near-tie; demand agreement on virtually every pixel.
    assert (mask == ref.numpy()).mean() > 0.999


def test_logits_to_mask_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match="expected logits"):
        h.logits_to_mask(torch.zeros(1, 21, 4, 4), 4, 4)


def test_encode_png_round_trips_class_indices_with_voc_palette() -> None:
    mask = (np.arange(35 * 19).reshape(19, 35) % 21).astype(np.uint8)
    png = h.encode_png(mask, {"model": "x"})
    img = Image.open(io.BytesIO(png))
    assert img.mode == "P" and img.size == (35, 19)
    assert np.array_equal(np.asarray(img), mask)
    palette = img.getpalette()
    assert palette is not None
    assert palette[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # background, aeroplane, bicycle
    assert palette[15 * 3 : 15 * 3 + 3] == [192, 128, 128]  # person
    assert img.info.get("model") == "x"


def test_encode_png_rejects_non_uint8_masks() -> None:
    with pytest.raises(ValueError, match="uint8"):
        h.encode_png(np.zeros((2, 2), dtype=np.int64))


def test_class_stats_sum_to_pixel_count_sorted_descending() -> None:
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[:3] = 15
    mask[3:4, :5] = 8
    names = [f"name{i}" for i in range(10)]
    stats = h.class_stats(mask, names)
    assert [s["name"] for s in stats] == ["name0", "class_15", "name8"]
    assert [s["pixels"] for s in stats] == [65, 30, 5]
    assert sum(s["pixels"] for s in stats) == mask.size
    assert sum(s["fraction"] for s in stats) == pytest.approx(1.0)


def test_mask_response_has_the_documented_shape_and_no_per_pixel_json() -> None:
    model = h.ModelInfo(arch="a", weights="random", sha256=None, untrained=True, archive_sha256="c" * 64)
    answer = h.mask_response(np.full((3, 4), 7, dtype=np.uint8), model)
    assert set(answer) == {"width", "height", "classes", "mask", "model"}
    assert (answer["width"], answer["height"]) == (4, 3)
    assert answer["model"] == {
        "arch": "a",
        "weights": "random",
        "sha256": None,
        "untrained": True,
        "archive_sha256": "c" * 64,
    }
    decoded = Image.open(io.BytesIO(base64.b64decode(answer["mask"])))
    assert decoded.size == (4, 3)


def test_response_format_input_then_accept_header() -> None:
    assert h.response_format({}, None) == "json"
    assert h.response_format({}, "image/png") == "png"
    assert h.response_format({"format": bytearray(b"PNG")}, None) == "png"
    assert h.response_format({"format": "json"}, "image/png") == "json"
    with pytest.raises(h.ImageRejectedError):
        h.response_format({"format": b"xml"}, None)


def test_request_bytes_reads_data_or_body_and_refuses_text_and_json() -> None:
    assert h.request_bytes({"data": bytearray(b"ab")}) == b"ab"
    assert h.request_bytes({"body": bytearray(b"cd")}) == b"cd"
    for item in ({}, {"body": "text"}, {"body": {"a": 1}}, {"data": 3}):
        with pytest.raises(h.ImageRejectedError):
            h.request_bytes(item)


def test_handler_settings_default_to_archive_input_size() -> None:
    assert h.handler_settings({}, None) == h.HandlerSettings(520, 1040, h.DEFAULT_MAX_PIXELS)
    assert h.handler_settings({}, 64) == h.HandlerSettings(64, 128, h.DEFAULT_MAX_PIXELS)
    assert h.handler_settings({"resize": 100}, 64) == h.HandlerSettings(100, 200, h.DEFAULT_MAX_PIXELS)


def test_torch_threads_per_worker_come_from_the_archive_config() -> None:
    assert h.handler_settings({}, 64).torch_threads == 0  # torch's default
    assert h.handler_settings({"torch_threads": 1}, 64).torch_threads == 1
    with pytest.raises(ValueError, match="torch_threads"):
        h.handler_settings({"torch_threads": -1}, 64)


def test_the_pixel_limit_is_image_policys_whatever_the_archive_says() -> None:
    assert h.DEFAULT_MAX_PIXELS == image_policy.MAX_PIXELS
    assert h.handler_settings({"max_pixels": 5}, 64).max_pixels == image_policy.MAX_PIXELS


def test_read_model_meta(tmp_path: Path) -> None:
    missing = h.read_model_meta(str(tmp_path / "none.json"))
    assert missing.untrained and missing.arch == "unknown"
    meta = {"arch": "x", "weights": "w", "sha256": "ab", "untrained": False, "input_size": 64}
    (tmp_path / "m.json").write_text(json.dumps(meta))
    info = h.read_model_meta(str(tmp_path / "m.json"))
    assert info.as_dict() == {
        "arch": "x",
        "weights": "w",
        "sha256": "ab",
        "untrained": False,
        "archive_sha256": None,
    }
    assert info.input_size == 64 and info.class_names == ()
    # Archives exported before archive_sha256 carry the same hash as torchscript_sha256.
    (tmp_path / "old.json").write_text(json.dumps({**meta, "torchscript_sha256": "cd"}))
    assert h.read_model_meta(str(tmp_path / "old.json")).archive_sha256 == "cd"
    (tmp_path / "new.json").write_text(
        json.dumps({**meta, "torchscript_sha256": "cd", "archive_sha256": "cd"})
    )
    assert h.read_model_meta(str(tmp_path / "new.json")).as_dict()["archive_sha256"] == "cd"


def test_read_model_meta_takes_class_names_from_the_archive(tmp_path: Path) -> None:
    meta = {"arch": "x", "weights": "w", "class_names": ["background", "cat"], "num_classes": 2}
    (tmp_path / "m.json").write_text(json.dumps(meta))
    assert h.read_model_meta(str(tmp_path / "m.json")).class_names == ("background", "cat")
    (tmp_path / "n.json").write_text(json.dumps({"arch": "x", "num_classes": 3}))
    assert h.read_model_meta(str(tmp_path / "n.json")).class_names == ("class_0", "class_1", "class_2")


# What the worker sees as a request's headers: REST carries the HTTP headers (strings), gRPC only the
# per-input content types (dicts).
REST = {"Host": "127.0.0.1:8080", "Content-Type": "application/octet-stream"}
GRPC: dict[str, Any] = {"data": {"content-type": None}}


class _FakeContext:
    """The parts of TorchServe's Context (TorchServe's, not ours) that the handler touches."""

    def __init__(self, headers: list[dict[str, Any]]) -> None:
        self.headers = headers
        self.status: dict[int, int] = {}
        self.content_type: dict[int, str] = {}

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self.headers[idx]

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        self.status[idx] = code

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_type[idx] = value


class _TinySegmenter(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Class 15 where red dominates, else 0: deterministic and shape-preserving.
        return torch.cat([x[:, :1] * 0, x[:, :1].repeat(1, 20, 1, 1) * 0 + x[:, :1] - x[:, 1:2]], dim=1)


def _wired_handler() -> h.SegmentationHandler:
    service = h.SegmentationHandler()
    service.model = torch.jit.script(_TinySegmenter())
    service.device = torch.device("cpu")
    service.model_info = h.ModelInfo(arch="tiny", weights="random", sha256=None, untrained=True)
    service.settings = h.HandlerSettings(resize=32, max_size=64, max_pixels=1_000_000)
    return service


def test_one_bad_item_never_fails_the_rest_of_the_batch() -> None:
    good = corpus.encode(corpus.rgb(30, 20), "PNG")
    other = corpus.encode(corpus.rgb(50, 50), "JPEG")
    data: list[dict[str, Any]] = [
        {"body": bytearray(good)},
        {"body": bytearray(b"not an image")},
        {"data": bytearray(other), "format": bytearray(b"png")},
        {"body": bytearray(good)},
    ]
    context = _FakeContext([REST, REST, GRPC, {**REST, "Accept": "image/png"}])
    answers = _wired_handler().handle(data, context)
    assert context.status == {1: 400}
    first = json.loads(answers[0])
    assert (first["width"], first["height"]) == (30, 20)
    assert json.loads(answers[1])["code"] == "not_an_image"
    assert isinstance(answers[2], bytes) and Image.open(io.BytesIO(answers[2])).size == (50, 50)
    assert context.content_type[2] == "image/png" and context.content_type[1] == "application/json"
    assert isinstance(answers[3], bytes) and answers[3].startswith(b"\x89PNG")


class _ClassThreeOfFive(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = x[:, :1] * 0
        return torch.cat([zeros, zeros, zeros, zeros + 1, zeros], dim=1)


def _answer_classes(service: h.SegmentationHandler) -> list[str]:
    image = corpus.encode(corpus.rgb(30, 20), "PNG")
    answers = service.handle([{"body": bytearray(image)}], _FakeContext([REST]))
    return [c["name"] for c in json.loads(answers[0])["classes"]]


def test_an_archive_without_class_names_answers_generic_names_from_the_logits() -> None:
    service = _wired_handler()
    service.model = torch.jit.script(_ClassThreeOfFive())
    assert _answer_classes(service) == ["class_3"]
    assert service.model_info.class_names == ("class_0", "class_1", "class_2", "class_3", "class_4")


def test_class_names_from_the_archive_name_the_answer() -> None:
    service = _wired_handler()
    service.model = torch.jit.script(_ClassThreeOfFive())
    names = ("background", "cat", "dog", "boat", "sheep")
    service.model_info = replace(service.model_info, class_names=names)
    assert _answer_classes(service) == ["boat"]
    assert service.model_info.class_names == names


def test_grpc_and_rest_requests_are_told_apart_by_their_headers() -> None:
    assert h.is_grpc_request(GRPC) and h.is_grpc_request({})
    assert not h.is_grpc_request(REST)


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"not an image", 400, "not_an_image"),
        (corpus.png_with_bad_crc(b"IDAT"), 400, "corrupt"),
        (corpus.bomb_png(1100, 1000), 413, "too_large"),
        (corpus.heic_header(), 415, "unsupported_format"),
    ],
)
def test_a_lone_rejected_grpc_request_raises_prediction_exception_with_its_status(
    data: bytes, status: int, code: str
) -> None:
    with pytest.raises(PredictionException) as raised:
        _wired_handler().handle([{"data": bytearray(data)}], _FakeContext([GRPC]))
    assert raised.value.error_code == status
    assert raised.value.message.startswith(f"{code}: ")


def test_a_lone_rejected_rest_request_keeps_its_per_item_status_and_json_body() -> None:
    context = _FakeContext([REST])
    answers = _wired_handler().handle([{"body": bytearray(b"<html>")}], context)
    assert context.status == {0: 400}
    assert json.loads(answers[0])["code"] == "not_an_image"


def test_a_rejected_grpc_request_sharing_a_batch_gets_its_error_body_and_the_others_their_masks() -> None:
    good = corpus.encode(corpus.rgb(30, 20), "PNG")
    context = _FakeContext([GRPC, GRPC])
    answers = _wired_handler().handle([{"data": bytearray(good)}, {"data": bytearray(b"junk")}], context)
    assert json.loads(answers[0])["width"] == 30
    assert json.loads(answers[1])["code"] == "not_an_image" and context.status == {1: 400}


@pytest.mark.parametrize(
    ("item", "headers"),
    [
        ({"describe": bytearray(b"1")}, GRPC),
        ({"describe": bytearray(b"")}, REST),
        ({"body": {"describe": True}}, REST),
    ],
)
def test_describe_answers_the_model_identity_without_a_forward(item: dict[str, Any], headers: Any) -> None:
    service = _wired_handler()
    service.model_info = replace(service.model_info, archive_sha256="ab" * 32)
    service.model = None  # a forward would fail
    answers = service.handle([item], _FakeContext([headers]))
    described = {**service.model_info.as_dict(), "class_names": list(service.model_info.class_names)}
    assert json.loads(answers[0]) == {"model": described}
    assert json.loads(answers[0])["model"]["archive_sha256"] == "ab" * 32


def test_a_reason_phrase_is_one_printable_line() -> None:
    traceback = (
        "inference failed: The following operation failed in the TorchScript interpreter.\n  File x\r\nboom"
    )
    assert h.reason_phrase(traceback) == (
        "inference failed: The following operation failed in the TorchScript interpreter."
    )
    assert h.reason_phrase("zu groß: 9000×9000") == "zu gro?: 9000?9000"
    assert h.reason_phrase("x" * 500) == "x" * 200
    assert h.reason_phrase("  \n ") == "error"
