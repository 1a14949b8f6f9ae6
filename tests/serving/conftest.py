"""Serving test fixtures: one archive built by training.export, one TorchServe on free ports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.oip import OipClient
from clients.segment import SegmentClient, ServingEndpoints, TokenSource
from seg_handler import launcher as launch
from tests.support import REPO_ROOT
from tests.torchserve_fixtures import OipServer, oip_server_for, running

# Small network input so each forward is cheap on a CPU; the handler still answers at full image size.
TEST_INPUT_SIZE = 64


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with deeplabv3.mar, built once per session by `python -m training.export` (random)."""
    store = tmp_path_factory.mktemp("model_store")
    command = [
        sys.executable,
        "-m",
        "training.export",
        "--arch",
        "deeplabv3_mobilenet_v3_large",
        "--weights",
        "random",
        "--out",
        str(store),
        "--input-size",
        str(TEST_INPUT_SIZE),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"training.export failed:\n{done.stdout}\n{done.stderr}"
    assert (store / "deeplabv3.mar").is_file()
    return store


@pytest.fixture(scope="session")
def torchserve(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[launch.ServeSettings]:
    """TorchServe with our config on free loopback ports, token auth on; stopped by its process group."""
    settings = launch.isolated_settings(
        model_store, tmp_path_factory.mktemp("torchserve"), ready_timeout_s=240
    )
    proc = launch.start(settings)
    try:
        yield settings
    finally:
        launch.stop_process(proc.pid)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def endpoints(torchserve: launch.ServeSettings) -> ServingEndpoints:
    return ServingEndpoints.local(
        torchserve.host,
        torchserve.inference_port,
        torchserve.management_port,
        torchserve.grpc_inference_port,
    )


@pytest.fixture(scope="session")
def client(torchserve: launch.ServeSettings, endpoints: ServingEndpoints) -> Iterator[SegmentClient]:
    with SegmentClient(endpoints, TokenSource.from_key_file(torchserve.key_file), timeout_s=120) as c:
        yield c


@pytest.fixture(scope="session")
def oip_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OipServer]:
    """The OIP server (KServe from .venv-oip) over the same export's .pt2, on a free loopback port."""
    server = oip_server_for(model_store, tmp_path_factory.mktemp("oip"))
    with running(server):
        yield server


@pytest.fixture(scope="session")
def oip_client(oip_server: OipServer) -> Iterator[OipClient]:
    with OipClient(oip_server.grpc_target, timeout_s=120) as c:
        yield c
