"""TLS by default for every target off this machine, against real servers on this machine's non-loopback
address: BoardClient and the `board` command speak TLS unless told ``plaintext`` (loopback stays plaintext),
and the TorchServe client refuses plaintext to a non-loopback target unless allowed.

"System roots" are the test CA here: gRPC reads GRPC_DEFAULT_SSL_ROOTS_FILE_PATH in the `board` process, so a
run without --ca-file shows that TLS was chosen by default and verified.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme

from clients.board import BoardClient, UnavailableError
from clients.channels import is_local_target
from clients.segment import (
    SegmentClient,
    SegmentInsecureTargetError,
    SegmentRejectedError,
    ServingEndpoints,
    TokenSource,
)
from tests.board.conftest import RunningServer, non_loopback_address, start_board_server, tiny_png
from tests.board.fake_torchserve import fake_torchserve
from tests.support import REPO_ROOT, Processes

BOARD = REPO_ROOT / ".venv" / "bin" / "board"


@dataclass(frozen=True)
class Remote:
    """This machine's non-loopback address, and a test CA with a certificate for it."""

    address: str
    ca_file: Path
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Remote:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve on")
    folder = tmp_path_factory.mktemp("remote-pki")
    ca = trustme.CA()
    issued = ca.issue_cert(address)
    found = Remote(address, folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    ca.cert_pem.write_to_path(str(found.ca_file))
    issued.private_key_and_cert_chain_pem.write_to_path(str(found.cert_file))
    issued.private_key_pem.write_to_path(str(found.key_file))
    return found


def on_every_address(processes: Processes, tmp_path: Path, *flags: str) -> RunningServer:
    extra = ("--address", "0.0.0.0:0", "--metrics-address", "none", *flags)
    return start_board_server(processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path, extra=extra)


def board_cli(
    tmp_path: Path, target: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed `board` against ``target``, with a config folder of its own and no BOARD_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BOARD_", "GRPC_DEFAULT_SSL"))}
    environment = {
        **clean,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "BOARD_TARGET": target,
        **(env or {}),
    }
    return subprocess.run(
        [str(BOARD), "--timeout", "5", *args], env=environment, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


# --- BoardClient and `board` -------------------------------------------------------------------------------


def test_clients_speak_tls_to_a_remote_target_and_plaintext_only_when_told(
    processes: Processes, tmp_path: Path, remote: Remote
) -> None:
    server = on_every_address(processes, tmp_path, "--allow-plaintext")  # a plaintext board (TLS proxy gone)
    target = f"{remote.address}:{server.port}"
    with BoardClient(target, timeout=5) as default, pytest.raises(UnavailableError):
        default.list_posts()  # a TLS handshake with a plaintext server: no conversation
    with BoardClient(target, timeout=5, tls=False) as plaintext:
        assert plaintext.list_posts().posts == []
    with BoardClient(f"127.0.0.1:{server.port}", timeout=5) as loopback:
        assert loopback.list_posts().posts == []  # loopback: plaintext by default

    refused = board_cli(tmp_path, target, "posts", "list")
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr, refused.stderr
    assert board_cli(tmp_path, target, "--plaintext", "posts", "list").returncode == 0
    assert board_cli(tmp_path, target, "posts", "list", env={"BOARD_PLAINTEXT": "1"}).returncode == 0
    both = board_cli(tmp_path, target, "--plaintext", "--tls", "posts", "list")
    assert both.returncode == 2 and "--plaintext" in both.stderr


def test_clients_reach_a_remote_tls_server_with_tls_by_default(
    processes: Processes, tmp_path: Path, remote: Remote
) -> None:
    tls = ("--tls-cert-file", str(remote.cert_file), "--tls-key-file", str(remote.key_file))
    server = on_every_address(processes, tmp_path, *tls)
    target = f"{remote.address}:{server.port}"
    trusted = {"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(remote.ca_file)}
    listed = board_cli(tmp_path, target, "--json", "posts", "list", env=trusted)  # no --tls, no --ca-file
    assert listed.returncode == 0, listed.stderr
    assert board_cli(tmp_path, target, "--ca-file", str(remote.ca_file), "posts", "list").returncode == 0
    assert board_cli(tmp_path, target, "--plaintext", "posts", "list", env=trusted).returncode == 1
    with BoardClient(target, timeout=5, root_certificates=remote.ca_file.read_bytes()) as client:
        assert client.list_posts().posts == []
    with BoardClient(target, timeout=5, tls=False) as plaintext, pytest.raises(UnavailableError):
        plaintext.list_posts()


# --- the TorchServe client ---------------------------------------------------------------------------------


def segment_client(target: str, **tls: object) -> SegmentClient:
    endpoints = ServingEndpoints("", "", grpc_inference_target=target)
    return SegmentClient(endpoints, TokenSource(inference_key="k"), timeout_s=10, **tls)  # type: ignore[arg-type]


@pytest.mark.integration  # a TLS gRPC server on this machine's address
def test_the_segmentation_client_refuses_plaintext_to_a_remote_target(remote: Remote) -> None:
    with fake_torchserve(host="0.0.0.0") as fake:
        remote_target = f"{remote.address}:{fake.port}"
        with segment_client(remote_target) as client, pytest.raises(SegmentInsecureTargetError) as caught:
            client.segment(tiny_png())
        assert "inference key in plaintext" in str(caught.value)
        assert fake.image_calls == 0  # refused before a byte left
        # Loopback, or a network the caller says it trusts: plaintext reaches the server (which refuses the
        # image: the fake refuses every one).
        with segment_client(f"127.0.0.1:{fake.port}") as local, pytest.raises(SegmentRejectedError):
            local.segment(tiny_png())
        with (
            segment_client(remote_target, allow_plaintext=True) as allowed,
            pytest.raises(SegmentRejectedError),
        ):
            allowed.segment(tiny_png())
        assert fake.image_calls == 2


@pytest.mark.integration  # a TLS gRPC server on this machine's address
def test_the_segmentation_client_speaks_tls_with_its_roots(remote: Remote) -> None:
    credentials = grpc.ssl_server_credentials([(remote.key_file.read_bytes(), remote.cert_file.read_bytes())])
    with fake_torchserve(host="0.0.0.0", credentials=credentials) as fake:
        target = f"{remote.address}:{fake.port}"
        with segment_client(target, root_certificates=remote.ca_file.read_bytes()) as client:
            with pytest.raises(SegmentRejectedError):
                client.segment(tiny_png())
            assert client.describe()["arch"] == "fake_arch"
        assert fake.image_calls == 1


@pytest.mark.parametrize(
    ("target", "local"),
    [
        ("127.0.0.1:50051", True),
        ("localhost:7070", True),
        ("[::1]:7070", True),
        ("dns:///[::1]:7070", True),
        ("unix:/run/board.sock", True),
        ("ipv4:127.0.0.1:1,127.0.0.2:2", True),  # an address list of loopback hosts only
        ("ipv4:127.0.0.1:1,10.0.0.5:2", False),  # one remote address in the list: TLS
        ("board.example.org:443", False),
        ("dns:///board.example.org:443", False),
        ("0.0.0.0:50051", False),
    ],
)
def test_which_targets_stay_on_this_machine(target: str, local: bool) -> None:
    assert is_local_target(target) is local
