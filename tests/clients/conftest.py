"""Fixtures for the console scripts: a real board server (auth on, the defaults), and ``cli``: `board` run in
this process with its own config folder, stdin, env and captured output.

The conftest's ``board`` tags nothing (no segmentation target: uploads stay PENDING); modules that need
tagging override it with a board tagging through the session TorchServe of tests/torchserve_fixtures.py
(a real archive from training.export behind the real handler), and compare what the CLI prints with what the
served archive says (``shown_labels``, ``shown_model``).

The CLI runs in-process (``board_main``) because each run is then cheap on a shared machine; the tests that
are about the process itself (argv, a terminal prompt without echo) run the installed `board` script.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from clients.cli import board_main
from clients.gen.board.v1 import board_pb2
from tests.board.conftest import Member, RunningServer, sign_up, start_board_server
from tests.support import Processes
from tests.torchserve_fixtures import TorchServe

# Columns: rich wraps table cells to the terminal's width, which would split the text the tests look for.
WIDE = "1000"
# Auth on is the server's default; said here because these tests are about signed-in clients.
AUTH_ON = ("--auth", "on")


@dataclass(frozen=True)
class Ran:
    """What a `board` run printed and returned."""

    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err


Cli = Callable[..., Ran]


def start_tls_board(processes: Processes, workdir: Path) -> tuple[RunningServer, Path]:
    """A board server (auth on) serving TLS with a certificate for localhost from a throw-away CA (trustme);
    the server and the CA's PEM file. Reach it as ``localhost:PORT``."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert_file, key_file, ca_file = workdir / "cert.pem", workdir / "key.pem", workdir / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    server = start_board_server(
        processes,
        f"sqlite:///{workdir / 'tls.db'}",
        workdir,
        extra=(*AUTH_ON, "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)),
    )
    return server, ca_file


def shown_labels(attachment: board_pb2.Attachment) -> str:
    """The labels the server stored for ``attachment``, as the CLI shows plain names: ``dog 31.0%, cat 5.2%``
    (the largest five)."""
    shown = [f"{label.name} {label.fraction:.1%}" for label in attachment.labels[:5]]
    if len(attachment.labels) > 5:
        shown.append(f"+{len(attachment.labels) - 5} more")
    return ", ".join(shown)


def shown_model(serve: TorchServe) -> str:
    """The identity of the archive ``serve`` serves, as the CLI shows it (``arch@sha256[:12] [weights,
    UNTRAINED]``), from the archive's model-meta.json, not from the board."""
    meta = serve.archive_metadata
    details = [str(meta["weights"]), *(["UNTRAINED"] if meta["untrained"] else [])]
    return f"{meta['arch']}@{str(meta['archive_sha256'])[:12]} [{', '.join(details)}]"


@pytest.fixture(scope="module")
def board(module_processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    """A board server with the default settings (auth on) that tags nothing: uploads stay PENDING."""
    workdir = tmp_path_factory.mktemp("board-cli")
    return start_board_server(module_processes, f"sqlite:///{workdir / 'board.db'}", workdir, extra=AUTH_ON)


@pytest.fixture
def member(board: RunningServer) -> Iterator[Member]:
    """A user of ``board`` with a password, signed in through the Python client (not through the CLI)."""
    made = sign_up(board.target, "Ada")
    yield made
    made.client.close()


def make_cli(
    target: str, config_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.setenv("COLUMNS", WIDE)
    monkeypatch.setenv("BOARD_TARGET", target)
    for name in ("BOARD_TOKEN", "BOARD_TLS", "BOARD_CA_FILE"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: object, stdin: str = "", env: dict[str, str] | None = None) -> Ran:
        capsys.readouterr()
        with monkeypatch.context() as scope:
            scope.setattr(sys, "stdin", io.StringIO(stdin))
            for name, value in (env or {}).items():
                scope.setenv(name, value)
            code = board_main([str(a) for a in args])
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


@pytest.fixture
def cli(
    board: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    """``cli(*args, stdin="", env={})``: `board ARGS` against ``board``, with a fresh config folder."""
    return make_cli(board.target, tmp_path / "config", monkeypatch, capsys)


@pytest.fixture
def logged_in(cli: Cli, member: Member) -> Member:
    """``member`` signed in through `board login` (the token in the CLI's file)."""
    ran = cli("login", "--email", member.email, stdin=member.password + "\n")
    assert ran.code == 0, ran.both
    return member
