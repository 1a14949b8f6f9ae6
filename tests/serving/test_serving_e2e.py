"""End to end against a real TorchServe (started once per session on free ports, token auth on)."""

from __future__ import annotations

import io
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from PIL import Image

from clients.gen.torchserve import inference_pb2, inference_pb2_grpc
from clients.segment import (
    SegmentAuthError,
    SegmentCancelledError,
    SegmentClient,
    SegmentRejectedError,
    SegmentUnavailableError,
    ServingEndpoints,
    TokenSource,
    Transport,
)
from clients.segment_cli import main as segment_main
from seg_handler import launcher as launch
from tests.serving import corpus

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]
TRANSPORTS: tuple[Transport, ...] = ("rest", "grpc")
SMALL_VALID = corpus.encode(corpus.rgb(12, 9), "PNG")


def _mask_of(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    assert img.mode == "P"
    return np.asarray(img)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("image", corpus.valid_images(), ids=lambda c: c.name)
def test_valid_image_gets_a_mask_of_its_displayed_size(
    client: SegmentClient, image: corpus.ValidImage, transport: Transport
) -> None:
    result = client.segment(image.data, transport=transport)
    assert (result.width, result.height) == (image.width, image.height)
    mask = _mask_of(result.mask_png)
    assert mask.shape == (image.height, image.width)
    assert sum(c.pixels for c in result.classes) == image.width * image.height
    assert {c.index for c in result.classes} == set(np.unique(mask).tolist())
    assert result.model["arch"] == "deeplabv3_mobilenet_v3_large" and result.model["untrained"] is True
    assert set(result.model) == {"arch", "weights", "sha256", "untrained", "archive_sha256"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_png_format_returns_the_mask_alone(client: SegmentClient, transport: Transport) -> None:
    png = client.segment_png(corpus.encode(corpus.rgb(31, 17), "JPEG"), transport=transport)
    assert _mask_of(png).shape == (17, 31)
    assert "deeplabv3_mobilenet_v3_large" in Image.open(io.BytesIO(png)).info["model"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_bad_input_is_a_4xx_and_the_same_worker_answers_next(
    client: SegmentClient, transport: Transport
) -> None:
    pids = client.worker_pids()
    assert len(pids) == 1
    failures = []
    for bad in corpus.bad_inputs():
        try:
            client.segment(bad.data, transport=transport)
            failures.append(f"{bad.name}: accepted")
        except SegmentRejectedError as exc:
            if exc.status != bad.status:
                failures.append(f"{bad.name}: {exc.status} {exc.code}, expected {bad.status}")
        ok = client.segment(SMALL_VALID, transport=transport)
        assert (ok.width, ok.height) == (12, 9), bad.name
        assert client.worker_pids() == pids, f"worker restarted after {bad.name}"
    assert not failures


def test_rest_status_codes_and_bodies_for_bad_inputs(torchserve: launch.ServeSettings) -> None:
    """Raw REST, as curl would see it: the HTTP status is the handler's, the body carries error and code."""
    key = launch.read_keys(torchserve.key_file)["inference"]
    url = f"{torchserve.inference_url}/predictions/{torchserve.model_name}"
    for bad in corpus.bad_inputs():
        response = requests.post(
            url,
            data=bad.data,
            headers={"Authorization": f"Bearer {key}", "Content-Type": bad.content_type},
            timeout=60,
        )
        assert response.status_code == bad.status, (bad.name, response.status_code, response.text[:200])
        body = response.json()
        assert body["code"] and body["error"] and body["status"] == bad.status, bad.name


def test_grpc_rejections_are_non_ok_statuses_with_the_reason(torchserve: launch.ServeSettings) -> None:
    """What grpcurl, Node or Go callers see: a code per kind of rejection, the reason in the details."""
    key = launch.read_keys(torchserve.key_file)["inference"]
    cases = [
        (b"hello", grpc.StatusCode.INVALID_ARGUMENT, "not_an_image"),
        (corpus.png_with_bad_crc(b"IDAT"), grpc.StatusCode.INVALID_ARGUMENT, "corrupt"),
        (corpus.bomb_png(20_000, 20_000), grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large"),
        (corpus.heic_header(), grpc.StatusCode.FAILED_PRECONDITION, "unsupported_format"),
    ]
    with grpc.insecure_channel(torchserve.grpc_inference_target) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)  # type: ignore[no-untyped-call]
        metadata = [("authorization", f"Bearer {key}")]
        for data, code, name in cases:
            request = inference_pb2.PredictionsRequest(model_name="deeplabv3", input={"data": data})
            with pytest.raises(grpc.RpcError) as raised:
                stub.Predictions(request, metadata=metadata, timeout=60)
            assert raised.value.code() == code, name
            details = raised.value.details() or ""
            assert details.startswith(f"{name}: "), details


def test_a_request_over_max_request_size_is_refused_before_sending_and_a_cancel_is_not_too_large(
    torchserve: launch.ServeSettings, endpoints: ServingEndpoints
) -> None:
    limit = int(launch.read_properties(torchserve.config_path.read_text())["max_request_size"])
    oversize = bytes(limit + 1024)
    tokens = TokenSource.from_key_file(torchserve.key_file)
    with SegmentClient(endpoints, tokens, max_request_bytes=limit) as sized:
        with pytest.raises(SegmentRejectedError) as rejected:
            sized.segment(oversize)
        assert (rejected.value.status, rejected.value.code) == (413, "request_too_large")
    # Sent anyway, TorchServe cuts the stream (CANCELLED): a cancel, never read as a bad image.
    with (
        SegmentClient(endpoints, tokens, max_request_bytes=2 * limit) as unsized,
        pytest.raises(SegmentCancelledError),
    ):
        unsized.segment(oversize)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_describe_names_the_served_model_without_an_image(
    client: SegmentClient, torchserve: launch.ServeSettings, transport: Transport
) -> None:
    identity = client.describe(transport=transport)
    meta = launch.archive_metadata(torchserve.model_store / torchserve.archive)
    assert identity["archive_sha256"] == meta["archive_sha256"] and len(str(meta["archive_sha256"])) == 64
    # The classes a mask's values stand for, in order, as the archive names them.
    assert identity.pop("class_names") == meta["class_names"]
    assert identity == client.segment(SMALL_VALID, transport=transport).model


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_items_in_a_batch_do_not_fail_the_good_ones(client: SegmentClient, transport: Transport) -> None:
    good = corpus.encode(corpus.rgb(20, 10), "JPEG")
    inputs = [good, b"junk", good, corpus.png_header_only(5, 5), good, b"", good, b"<html>"] * 2

    def call(data: bytes) -> str:
        try:
            result = client.segment(data, transport=transport)
            return f"ok {result.width}x{result.height}"
        except SegmentRejectedError as exc:
            return f"rejected {exc.status}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(call, inputs))
    expected = ["ok 20x10" if data is good else "rejected 400" for data in inputs]
    assert outcomes == expected


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_large_photo_over_default_request_limit_is_served(
    client: SegmentClient, transport: Transport
) -> None:
    data = corpus.encode(corpus.rgb(2600, 2000, seed=3), "PNG", compress_level=0)
    assert len(data) > 12_000_000  # twice TorchServe's default max_request_size
    result = client.segment(data, transport=transport)
    assert (result.width, result.height) == (2600, 2000)


def test_rest_without_token_is_refused_and_with_token_accepted(torchserve: launch.ServeSettings) -> None:
    url = f"{torchserve.inference_url}/predictions/{torchserve.model_name}"
    keys = launch.read_keys(torchserve.key_file)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {keys['management']}"}):
        refused = requests.post(url, data=SMALL_VALID, headers=headers, timeout=60)
        assert refused.status_code in (400, 401, 403) and "Token" in refused.text
    accepted = requests.post(
        url, data=SMALL_VALID, headers={"Authorization": f"Bearer {keys['inference']}"}, timeout=60
    )
    assert accepted.status_code == 200 and accepted.json()["width"] == 12
    management = f"{torchserve.management_url}/models"
    assert requests.get(management, timeout=10).status_code in (400, 401, 403)
    listed = requests.get(management, headers={"Authorization": f"Bearer {keys['management']}"}, timeout=10)
    assert listed.status_code == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_without_token_gets_auth_error(endpoints: ServingEndpoints, transport: Transport) -> None:
    with SegmentClient(endpoints, TokenSource(), timeout_s=30) as anonymous, pytest.raises(SegmentAuthError):
        anonymous.segment(SMALL_VALID, transport=transport)
    with SegmentClient(endpoints, TokenSource(inference_key="wrong", management_key="wrong")) as wrong:
        with pytest.raises(SegmentAuthError):
            wrong.segment(SMALL_VALID, transport=transport)
        with pytest.raises(SegmentAuthError):
            wrong.list_models()


def test_model_register_api_is_off(client: SegmentClient, torchserve: launch.ServeSettings) -> None:
    key = launch.read_keys(torchserve.key_file)["management"]
    response = requests.post(
        f"{torchserve.management_url}/models",
        params={"url": "https://example.com/evil.mar"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert response.status_code >= 400
    assert [m["modelName"] for m in client.list_models()] == ["deeplabv3"]


def test_every_listener_is_on_loopback(torchserve: launch.ServeSettings) -> None:
    config = launch.read_properties(torchserve.config_path.read_text())
    for key in ("inference_address", "management_address", "metrics_address"):
        assert config[key].startswith("http://127.0.0.1:"), key
    assert config["grpc_inference_address"] == config["grpc_management_address"] == "127.0.0.1"
    assert config["enable_model_api"] == "false" and config["disable_token_authorization"] == "false"
    assert config["allowed_urls"] == f"file://{torchserve.model_store.resolve()}/.*"
    listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=False).stdout
    ports = [
        torchserve.inference_port,
        torchserve.management_port,
        torchserve.metrics_port,
        torchserve.grpc_inference_port,
        torchserve.grpc_management_port,
    ]
    for port in ports:
        lines = [line for line in listening.splitlines() if f":{port} " in line]
        if lines:  # ss may be missing or unprivileged; when it answers, only loopback binds are allowed
            assert all("127.0.0.1:" in line or "127.0.0.1]:" in line for line in lines), lines


def test_segment_cli_writes_masks_and_overlays_for_a_directory(
    torchserve: launch.ServeSettings, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(corpus.exif_rotated_jpeg(40, 20, 6))
    (photos / "b.png").write_bytes(corpus.encode(corpus.rgb(16, 16), "PNG"))
    (photos / "broken.jpg").write_bytes(b"nope")
    ports = [
        f"--inference-port={torchserve.inference_port}",
        f"--grpc-port={torchserve.grpc_inference_port}",
        f"--management-port={torchserve.management_port}",
        f"--key-file={torchserve.key_file}",
    ]
    for transport in ("--grpc", "--rest"):
        out, overlays = tmp_path / f"masks{transport}", tmp_path / f"overlays{transport}"
        code = segment_main([str(photos), "--out", str(out), "--overlay", str(overlays), transport, *ports])
        assert code == 1  # broken.jpg failed, the others were written
        assert Image.open(out / "a.mask.png").size == (20, 40)
        assert Image.open(overlays / "a.overlay.png").size == (20, 40)
        assert Image.open(out / "b.mask.png").size == (16, 16)
        assert not (out / "broken.mask.png").exists()
    single = tmp_path / "one.png"
    assert segment_main([str(photos / "b.png"), "--out", str(single), *ports]) == 0
    assert Image.open(single).size == (16, 16)


def test_workers_wait_passively_between_torch_parallel_regions(client: SegmentClient) -> None:
    """launch.WORKER_ENV reaches the Python worker: libgomp's spin-waiting would burn the cores the
    frontend and the board need (bench/serving.py measured it)."""
    (pid,) = client.worker_pids()
    environ = dict(
        entry.split(b"=", 1)
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if b"=" in entry
    )
    for key, value in launch.WORKER_ENV.items():
        assert environ.get(key.encode()) == value.encode(), key


def test_scaling_workers_through_the_management_api(client: SegmentClient) -> None:
    """Last on purpose: it changes the worker set the pid checks above rely on."""
    before = client.worker_pids()
    client.scale_workers(2)
    after = client.worker_pids()
    assert len(after) == 2 and set(before) <= set(after)
    assert all(w["status"] == "READY" for w in client.describe_model()[0]["workers"])
    client.scale_workers(1)
    assert len(client.worker_pids()) == 1
    assert client.segment(SMALL_VALID).width == 12


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_model_name_torchserve_does_not_serve_is_unavailable_not_the_images_fault(
    torchserve: launch.ServeSettings, endpoints: ServingEndpoints, transport: Transport
) -> None:
    # A misconfigured name must pause a caller's work (retried once fixed), never fail uploads one by one.
    wrong = replace(endpoints, model_name="no-such-model")
    tokens = TokenSource.from_key_file(torchserve.key_file)
    with (
        SegmentClient(wrong, tokens, timeout_s=60) as client,
        pytest.raises(SegmentUnavailableError, match="check the model name") as raised,
    ):
        client.segment(SMALL_VALID, transport=transport)
    assert not raised.value.reached
