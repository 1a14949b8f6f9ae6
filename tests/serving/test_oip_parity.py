"""TorchServe (TorchScript from the .mar) and the OIP server (the .pt2 of the same export) answer alike: the
same classes and the same mask pixels for every photo of the corpus, the same refusal for every bad input,
the same model identity. Both real servers, over gRPC."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from clients.oip import OipClient
from clients.segment import Segmentation, SegmentClient, SegmentRejectedError
from tests.serving.corpus import BadInput, bad_inputs, encode, valid_images

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]


def photos() -> list[tuple[str, bytes]]:
    """The corpus's valid images of every format and mode, and photo-like gradients of several sizes."""
    found = [(image.name, image.data) for image in valid_images()]
    for seed, (width, height) in enumerate([(640, 427), (427, 640), (300, 300), (1024, 96)]):
        rng = random.Random(seed)
        across = Image.linear_gradient("L").rotate(90).resize((width, height))
        down = Image.linear_gradient("L").resize((width, height))
        noise = Image.frombytes("L", (width, height), rng.randbytes(width * height))
        found.append((f"photo-{width}x{height}", encode(Image.merge("RGB", (across, down, noise)), "JPEG")))
    return found


def mask_pixels(answer: Segmentation) -> np.ndarray:
    with Image.open(io.BytesIO(answer.mask_png)) as mask:
        assert mask.mode == "P"
        return np.asarray(mask)


def test_every_photo_gets_the_same_classes_and_mask_pixels_from_both_servers(
    client: SegmentClient, oip_client: OipClient
) -> None:
    compared = 0
    for name, data in photos():
        torchserve = client.segment(data, transport="grpc")
        oip = oip_client.segment(data)

        assert (oip.width, oip.height) == (torchserve.width, torchserve.height), name
        assert oip.classes == torchserve.classes, name
        assert np.array_equal(mask_pixels(oip), mask_pixels(torchserve)), name
        assert oip.model == torchserve.model, name
        compared += 1
    assert compared >= 25


@pytest.mark.parametrize("bad", bad_inputs(), ids=lambda b: b.name)
def test_every_bad_input_is_refused_alike_by_both_servers(
    bad: BadInput, client: SegmentClient, oip_client: OipClient
) -> None:
    data = bad.data
    with pytest.raises(SegmentRejectedError) as by_torchserve:
        client.segment(data, transport="grpc")
    with pytest.raises(SegmentRejectedError) as by_oip:
        oip_client.segment(data)

    refusal = by_oip.value
    assert (refusal.status, refusal.code) == (by_torchserve.value.status, by_torchserve.value.code)
    assert refusal.status == bad.status
    assert refusal.message == by_torchserve.value.message


def test_both_servers_describe_the_same_model_and_classes(
    client: SegmentClient, oip_client: OipClient
) -> None:
    assert oip_client.describe() == client.describe(transport="grpc")


def test_the_oip_server_is_ready_and_names_the_contract_tensors(oip_client: OipClient) -> None:
    metadata = oip_client.model_metadata()

    assert oip_client.server_ready() and oip_client.model_ready()
    assert [(t.name, t.datatype) for t in metadata.inputs] == [("image", "BYTES")]
    assert [t.name for t in metadata.outputs] == [
        "mask",
        "class_index",
        "class_name",
        "class_pixels",
        "class_fraction",
    ]
