"""Transport security of real servers: TLS with a test CA (trustme) for the Python client and grpcurl, and the
start-up refusals: a public address with auth on needs TLS or --allow-plaintext; --auth off only on loopback,
and announced there; the board's TorchServe client speaks TLS with --segmentation-ca-file and refuses a
remote target in plaintext unless --allow-plaintext-segmentation."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme

from clients.board import BoardClient, UnavailableError
from clients.gen.board.v1 import board_pb2
from tests.board.conftest import (
    BOARD_SERVER,
    PASSWORD,
    RunningServer,
    grpcurl,
    new_email,
    sign_up,
    start_board_server,
    tiny_png,
)
from tests.board.fake_torchserve import fake_torchserve
from tests.support import Processes

_refused = itertools.count()


@dataclass(frozen=True)
class Pki:
    """A test CA and a server certificate it issued for 127.0.0.1 and localhost, as PEM files."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @property
    def roots(self) -> bytes:
        return self.ca_file.read_bytes()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    pki.cert_file.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(pki.key_file))
    return pki


@pytest.fixture(scope="module")
def tls_server(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory, module_processes: Processes
) -> RunningServer:
    tmp_path = tmp_path_factory.mktemp("tls")
    flags = ("--tls-cert-file", str(pki.cert_file), "--tls-key-file", str(pki.key_file))
    return start_board_server(module_processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path, extra=flags)


def test_python_client_signs_in_and_writes_over_tls(tls_server: RunningServer, pki: Pki) -> None:
    member = sign_up(tls_server.target, "Secure", root_certificates=pki.roots)
    with member.client as board:
        post = board.create_post(0, "over TLS", "the token travels encrypted")
        assert post.user_id == member.id
        assert board.get_user(member.id).email == member.email


@pytest.mark.parametrize("how", ["plaintext", "an untrusted CA"])
def test_a_client_that_does_not_speak_tls_with_this_ca_gets_nowhere(
    tls_server: RunningServer, how: str
) -> None:
    roots = trustme.CA().cert_pem.bytes() if how == "an untrusted CA" else None
    with (
        BoardClient(tls_server.target, timeout=10, root_certificates=roots) as board,
        pytest.raises(UnavailableError),
    ):
        board.create_user("Nobody", new_email(), PASSWORD)


@pytest.mark.slow
def test_grpcurl_over_tls_with_the_test_ca_and_a_bearer_token(tls_server: RunningServer, pki: Pki) -> None:
    target, ca = tls_server.target, ("-cacert", str(pki.ca_file))
    listed = grpcurl(*ca, target, "list")
    assert listed.returncode == 0, listed.stderr
    assert "board.v1.BoardService" in listed.stdout.split()

    address = new_email("curl")
    sign_up_request = json.dumps({"name": "Curl", "email": address, "password": PASSWORD})
    created = grpcurl(*ca, target, "board.v1.BoardService/CreateUser", data=sign_up_request)
    assert created.returncode == 0, created.stderr
    user = json.loads(created.stdout)
    session = json.loads(
        grpcurl(
            *ca,
            target,
            "board.v1.BoardService/SignIn",
            data=json.dumps({"email": address, "password": PASSWORD}),
        ).stdout
    )
    token = session.get("accessToken") or session["access_token"]

    post_request = json.dumps({"title": "grpcurl over TLS", "content": "-cacert and -H"})
    posted = grpcurl(*ca, target, "board.v1.BoardService/CreatePost", data=post_request, token=token)
    assert posted.returncode == 0, posted.stderr
    post = json.loads(posted.stdout)
    assert (post.get("userId") or post.get("user_id")) == user["id"]
    own = grpcurl(
        *ca, target, "board.v1.BoardService/GetUser", data=json.dumps({"id": user["id"]}), token=token
    )
    assert json.loads(own.stdout)["email"] == address

    # Without the CA the server's certificate is not trusted; without TLS there is no conversation.
    untrusted = grpcurl(target, "list")
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr.lower()
    plaintext = grpcurl("-plaintext", target, "list")
    assert plaintext.returncode != 0


# --- start-up refusals -------------------------------------------------------------------------------------


def refused_start(processes: Processes, tmp_path: Path, *flags: str) -> str:
    """Start board-server with ``flags``, expect it to exit with status 2 without serving; return its log."""
    name = f"refused-{next(_refused)}"
    database = tmp_path / f"{name}.db"
    database.touch()
    proc = processes.start(
        [str(BOARD_SERVER), "--database-url", f"sqlite:///{database}", "--processes", "1", *flags],
        name=name,
        cwd=tmp_path,
    )
    assert proc.wait(timeout=60) == 2, processes.log_text(name)
    log = processes.log_text(name)
    assert "listening on" not in log
    return log


def test_a_public_address_with_auth_on_needs_tls_or_allow_plaintext(
    processes: Processes, tmp_path: Path, pki: Pki
) -> None:
    log = refused_start(processes, tmp_path, "--address", "0.0.0.0:0")
    assert "refusing to accept passwords and tokens in plaintext on '0.0.0.0'" in log
    assert "--tls-cert-file" in log and "--allow-plaintext" in log

    database = f"sqlite:///{tmp_path / 'public.db'}"
    for flags in (
        ("--address", "0.0.0.0:0", "--allow-plaintext"),  # behind a proxy that terminates TLS
        (
            "--address",
            "0.0.0.0:0",
            "--tls-cert-file",
            str(pki.cert_file),
            "--tls-key-file",
            str(pki.key_file),
        ),
    ):
        server = start_board_server(processes, database, tmp_path, extra=flags)
        assert f"listening on 0.0.0.0:{server.port}" in server.log()
        roots = pki.roots if "--tls-cert-file" in flags else None
        member = sign_up(server.target, "Public", root_certificates=roots)
        member.client.close()
        processes.stop(server.proc)


def test_auth_off_is_refused_on_a_public_address(processes: Processes, tmp_path: Path, pki: Pki) -> None:
    tls = ("--tls-cert-file", str(pki.cert_file), "--tls-key-file", str(pki.key_file))
    for flags in (
        ("--address", "0.0.0.0:0", "--auth", "off"),
        ("--address", "0.0.0.0:0", "--auth", "off", *tls),
    ):
        log = refused_start(processes, tmp_path, *flags)
        assert "--auth off is for local development only: refused on '0.0.0.0'" in log


def test_auth_off_on_loopback_is_announced_and_lets_anyone_act_as_anyone(
    processes: Processes, tmp_path: Path
) -> None:
    server = start_board_server(
        processes, f"sqlite:///{tmp_path / 'dev.db'}", tmp_path, extra=("--auth", "off")
    )
    assert "AUTH IS OFF (--auth off)" in server.log()
    with server.client() as anyone:
        ada = anyone.create_user("Ada", new_email())  # no password needed
        assert ada.email  # and every email is visible
        post = anyone.create_post(ada.id, "as Ada", "without signing in")
        assert post.user_id == ada.id
        anyone.delete_post(post.id)


# --- the board's TorchServe client -------------------------------------------------------------------------


def test_a_remote_segmentation_target_in_plaintext_is_refused_at_start(
    processes: Processes, tmp_path: Path
) -> None:
    log = refused_start(processes, tmp_path, "--segmentation-target", "192.0.2.10:7070")
    assert "refusing to send the inference key in plaintext to '192.0.2.10:7070'" in log
    assert "--segmentation-ca-file" in log and "--allow-plaintext-segmentation" in log


def test_the_board_tags_through_a_model_server_over_tls_with_its_ca(
    processes: Processes, tmp_path: Path, pki: Pki
) -> None:
    credentials = grpc.ssl_server_credentials([(pki.key_file.read_bytes(), pki.cert_file.read_bytes())])
    with fake_torchserve(credentials=credentials) as fake:
        flags = (
            "--segmentation-target", fake.target, "--segmentation-ca-file", str(pki.ca_file),
            "--tagging-poll", "0.3",
        )  # fmt: skip
        server = start_board_server(processes, f"sqlite:///{tmp_path / 'b.db'}", tmp_path, extra=flags)
        assert f"tagging via TorchServe gRPC {fake.target} (TLS)" in server.log()
        member = sign_up(server.target, "Tagged")
        with member.client as client:
            post = client.create_post(0, "t", "c")
            added = client.add_attachment(post.id, "a.png", tiny_png())
            settled = client.wait_for_tagging(added.id, timeout=60)
        # The fake refuses every image: the refusal came back over the TLS channel.
        assert settled.status == board_pb2.ATTACHMENT_STATUS_FAILED
        assert "the fake model server refuses every image" in settled.failure_reason
        assert fake.image_calls >= 1
