"""Serving test fixtures: a TorchServe of its own on free ports, serving the run's test archive (built once by
training.export, tests/torchserve_fixtures.py). Its users form one xdist group (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.oip import OipClient
from clients.segment import SegmentClient, ServingEndpoints, TokenSource
from seg_handler import launcher as launch
from tests.torchserve_fixtures import (
    OipServer,
    oip_server_for,
    private_serve_settings,
    running,
    start_on_free_ports,
)


@pytest.fixture(scope="session")
def model_store(e2e_model_store: Path) -> Path:
    """The run's test archive: deeplabv3_mobilenet_v3_large, random weights, input 64."""
    assert (e2e_model_store / "deeplabv3.mar").is_file()
    return e2e_model_store


@pytest.fixture(scope="session")
def torchserve(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[launch.ServeSettings]:
    """TorchServe with our config on free loopback ports, token auth on; stopped by its process group."""
    settings = private_serve_settings(model_store, tmp_path_factory.mktemp("torchserve"))
    proc, settings = start_on_free_ports(settings, launch.start)
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
