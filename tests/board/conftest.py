"""Board fixtures: real `board-server` subprocesses on port 0, over SQLite and over PostgreSQL, with accounts.

Servers run with the defaults: auth on (a write needs a signed-in caller), reads open to anyone. The suite's
accounts come from ``sign_up``: a fresh user with a password, signed in, whose BoardClient then sends the
access token on every call. Admins are made the way an operator makes them: ``board-server admin grant EMAIL
--database-url URL`` on the database itself.

The PostgreSQL leg uses BOARD_TEST_POSTGRES_URL when set, otherwise starts a throw-away cluster (initdb +
pg_ctl on a free port, trust auth, socket in a temporary folder; as the `postgres` user when run as root).
Without PostgreSQL binaries it is skipped with the reason, unless BOARD_TEST_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import Engine, create_engine

from bench.postgres import Cluster, throwaway_cluster
from board_server.runtime.config import Settings
from board_server.runtime.supervisor import SERVER_MODULES
from board_server.storage.engine import POSTGRES_MODULES
from clients.board import BoardClient, BoardClientError
from clients.channels import is_loopback_host
from clients.gen.board.v1 import board_pb2
from seg_handler.launcher.forks import ForkServer
from tests.support import REPO_ROOT, Processes

BOARD_SERVER = REPO_ROOT / ".venv" / "bin" / "board-server"
# What `board-server` runs and what its fork server imports once (see ``board_forks``).
BOARD_MAIN = "board_server.__main__:main"
BOARD_PRELOAD = (
    *SERVER_MODULES,
    "board_server.runtime.serve",
    "board_server.runtime.supervisor",
    "board_server.runtime.database",
    "board_server.domain.admin",
    # Imported where used, by every start of the suite's boards: PostgreSQL's, and Alembic on a new database.
    *POSTGRES_MODULES,
    "alembic.command",
    "alembic.config",
)
GRPCURL = REPO_ROOT / ".venv" / "bin" / "grpcurl"
LISTENING = re.compile(r"listening on (\S+):(\d+)")
WEB_APP = re.compile(r"web app and Connect on (https?://\S+?)/?$", re.MULTILINE)
PASSWORD = "correct horse battery staple"
# RPCs of the contract that the gRPC server does not implement yet (none today): only they may answer
# UNIMPLEMENTED, and they write no audit line.
NOT_BUILT: frozenset[str] = frozenset()
# The suite signs up, signs in (wrongly too) and writes far more from 127.0.0.1 than a person would: the
# limits per address and per user are raised for every server it starts. A test of a limit sets it again
# in ``extra``, which comes later and wins.
SUITE_LIMITS = (
    "--sign-in-failures-per-peer", "100000",
    "--sign-ups-per-peer", "100000",
    "--writes-per-user-per-minute", "100000",
)  # fmt: skip
# A password hash costs ~0.3 s of CPU as shipped, and the suite signs up thousands of users: its servers hash
# with the cheapest parameters, but for the tests of hashing itself (SHIPPED_HASHING) and servers on a
# public address (which refuse the cheapest).
SUITE_HASHING = ("--password-hashing", "cheapest")
SHIPPED_HASHING = ("--password-hashing", Settings().password_hashing)


def listens_publicly(flags: Sequence[str]) -> bool:
    """Whether ``flags`` put a listener on an address that is not loopback."""
    return any(
        flag in ("--address", "--http-address")
        and value != "none"
        and not is_loopback_host(value.rpartition(":")[0].strip("[]"))
        for flag, value in itertools.pairwise(flags)
    )


def shipped_limits() -> tuple[str, ...]:
    """The flags that set the limits of ``SUITE_LIMITS`` back to their defaults (for tests of the limits
    as shipped, and the fuzz test)."""
    defaults = Settings()
    return (
        "--sign-in-failures-per-peer", str(defaults.sign_in_failures_per_peer),
        "--sign-ups-per-peer", str(defaults.sign_ups_per_peer),
        "--writes-per-user-per-minute", str(defaults.writes_per_user_per_minute),
    )  # fmt: skip


def new_email(prefix: str = "u") -> str:
    """An email no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.org"


def tiny_png() -> bytes:
    """A small valid PNG: an attachment the server accepts."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (where a route outward starts), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def photo_near_the_limit(limit: int = 20 * 1024 * 1024) -> bytes:
    """A valid PNG of random pixels (stored without compression) just under ``limit`` bytes: the largest
    photo the server's default attachment limit takes, give or take a few kB."""
    width = 2560
    height = (limit - 64 * 1024) // (width * 3)
    noise = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG", compress_level=0)
    data = buffer.getvalue()
    assert limit - 128 * 1024 < len(data) <= limit, len(data)
    return data


# --- accounts ----------------------------------------------------------------------------------------------


@dataclass
class Member:
    """A signed-up user and a client signed in as them (the token goes with every call)."""

    client: BoardClient
    user: board_pb2.User
    password: str

    @property
    def id(self) -> int:
        return int(self.user.id)

    @property
    def email(self) -> str:
        return str(self.user.email)


def sign_up(
    target: str,
    name: str = "Member",
    *,
    email: str | None = None,
    password: str = PASSWORD,
    timeout: float = 20.0,
    root_certificates: bytes | None = None,
) -> Member:
    """Create a user with a password (CreateUser, anonymous sign-up) and sign in as them; return the Member.

    ``root_certificates`` (PEM) for a TLS server.
    """
    board = BoardClient(target, timeout=timeout, root_certificates=root_certificates)
    try:
        user = board.create_user(name, email or new_email(), password)
        board.sign_in(user.email, password)
    except BaseException:
        board.close()
        raise
    return Member(board, user, password)


def sign_in(
    target: str, email: str, password: str = PASSWORD, *, root_certificates: bytes | None = None
) -> BoardClient:
    """A new client with a new session of an existing user (another device, say)."""
    board = BoardClient(target, timeout=20.0, root_certificates=root_certificates)
    try:
        board.sign_in(email, password)
    except BaseException:
        board.close()
        raise
    return board


# This test process's fork server of `board-server`, once started.
_BOARD_FORKS: dict[str, ForkServer] = {}


def board_forks() -> ForkServer | None:
    """This test process's fork server of `board-server`, started at the first call; None with
    BOARD_TEST_FORK=0.

    The suite starts the board a few hundred times, each start of the executable spending ~1.5 s of CPU
    on imports. Forked from a process that imported it once, the same ``main(argv)`` runs with its own
    arguments, environment, directory, session and log, on ~0.3 s. Tests of the executable itself (its
    start-up under kill -9, TLS files, the README tour, `make run`) still execute it.
    """
    if os.environ.get("BOARD_TEST_FORK", "1") == "0":
        return None
    if "board" not in _BOARD_FORKS:
        _BOARD_FORKS["board"] = ForkServer(BOARD_MAIN, BOARD_PRELOAD)
    return _BOARD_FORKS["board"]


def close_board_forks() -> None:
    """End this test process's fork server (the servers it forked are stopped by their own guards)."""
    if forks := _BOARD_FORKS.pop("board", None):
        forks.close()


def run_board_server(
    *args: str, stdin: str = "", cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``board-server ARGS`` to its end (forked unless BOARD_TEST_FORK=0, see ``board_forks``): exit status,
    stdout, stderr."""
    command = [str(BOARD_SERVER), *args]
    forks = board_forks()
    popen = subprocess.Popen if forks is None else forks.popen
    with popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, text=True
    ) as proc:
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def run_admin(
    database_url: str, *args: str, stdin: str = "", workdir: Path | None = None, audit_log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``board-server admin ARGS --database-url URL``: the operator's subcommands, on the database itself."""
    command = ["admin", *args, "--database-url", database_url]
    if audit_log is not None:
        command += ["--audit-log", str(audit_log)]
    return run_board_server(*command, stdin=stdin, cwd=workdir)


def at_once(
    targets: Sequence[str], count: int, call: Callable[[BoardClient, int], object]
) -> list[BoardClientError | None]:
    """Make ``count`` calls ``call(client, n)`` released together, each on its own connection (spread over
    ``targets``); return what each raised, or None."""
    clients = [BoardClient(targets[n % len(targets)], timeout=60) for n in range(count)]
    start = threading.Barrier(count)

    def one(n: int) -> BoardClientError | None:
        start.wait()
        try:
            call(clients[n], n)
        except BoardClientError as exc:
            return exc
        return None

    try:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(one, range(count)))
    finally:
        for client in clients:
            client.close()


def grpcurl(
    *args: str, data: str | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run grpcurl with ``args`` (transport flags first: ``-plaintext`` or ``-cacert FILE``), a JSON request
    body and a bearer token."""
    extra = ["-d", data] if data is not None else []
    if token is not None:
        extra += ["-H", f"authorization: Bearer {token}"]
    return subprocess.run(
        [str(GRPCURL), *extra, *args], capture_output=True, text=True, timeout=30, check=False
    )


@contextmanager
def database_engine(database_url: str) -> Iterator[Engine]:
    """An engine on a server's database, for tests that read (or age) its rows behind the API's back."""
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


# --- servers -----------------------------------------------------------------------------------------------


@dataclass
class RunningServer:
    """A board-server subprocess and where to reach it."""

    proc: subprocess.Popen[bytes]
    name: str
    port: int
    database_url: str
    audit_log: Path
    processes: Processes
    workdir: Path
    # The HTTP listener (Connect, gRPC-Web, the web app), e.g. http://127.0.0.1:41234; None when off.
    web_url: str | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.processes.log_text(self.name)

    def client(self, timeout: float = 20.0, token: str | None = None) -> BoardClient:
        """A client of this server: anonymous, or carrying ``token``."""
        return BoardClient(self.target, timeout=timeout, token=token)

    def sign_up(self, name: str = "Member", *, email: str | None = None) -> Member:
        """A new user signed in on this server (see ``sign_up``)."""
        return sign_up(self.target, name, email=email)

    def admin(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """Run ``board-server admin ARGS`` on this server's database, auditing to this server's audit log."""
        return run_admin(
            self.database_url, *args, stdin=stdin, workdir=self.workdir, audit_log=self.audit_log
        )

    def make_admin(self, name: str = "Admin") -> Member:
        """A new user made an admin with ``board-server admin grant`` (their session sees it at once)."""
        member = self.sign_up(name)
        granted = self.admin("grant", member.email)
        assert granted.returncode == 0, granted.stderr
        return member


_names = itertools.count()


def start_board_server(
    processes: Processes,
    database_url: str,
    workdir: Path,
    *,
    extra: tuple[str, ...] = (),
    server_processes: int | None = 1,
    env: dict[str, str] | None = None,
) -> RunningServer:
    """Start `board-server` on 127.0.0.1:0 with the default settings (auth on) but the suite's raised limits
    (``SUITE_LIMITS``) and password hashing (``SUITE_HASHING``), and wait for its 'listening on' line; return
    it with its port.

    ``server_processes`` is ``--processes`` (1 by default: cheap; None: the server's default of one process
    per core). ``extra`` flags come last, so they win; ``env`` is added to the server's environment.
    """
    name = f"board-{next(_names)}"
    audit = workdir / f"{name}-audit.log"
    workdir.mkdir(parents=True, exist_ok=True)
    # Port 0 for the metrics and the HTTP listener too: many servers run side by side in the suite.
    args = [
        str(BOARD_SERVER),
        "--address",
        "127.0.0.1:0",
        "--metrics-address",
        "127.0.0.1:0",
        "--http-address",
        "127.0.0.1:0",
        "--database-url",
        database_url,
    ]
    if server_processes is not None:
        args += ["--processes", str(server_processes)]
    hashing = SHIPPED_HASHING if listens_publicly(extra) else SUITE_HASHING
    proc = processes.start(
        [*args, "--audit-log", str(audit), *SUITE_LIMITS, *hashing, *extra],
        name=name,
        cwd=workdir,
        env=env,
        forks=board_forks(),
    )
    deadline = time.monotonic() + 60
    while not (match := LISTENING.search(processes.log_text(name))):
        # A server that exits (a refused setting, a bug at start-up) fails the test at once, with its log.
        if proc.poll() is not None:
            raise RuntimeError(f"board-server exited with {proc.returncode}:\n{processes.log_text(name)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not say 'listening on' within 60 s:\n{processes.log_text(name)}")
        time.sleep(0.05)
    port = int(match.group(2))
    web = WEB_APP.search(processes.log_text(name))
    web_url = web.group(1) if web else None
    return RunningServer(proc, name, port, database_url, audit, processes, workdir, web_url)


# --- PostgreSQL --------------------------------------------------------------------------------------------


@dataclass
class PostgresCluster:
    """A throw-away cluster (or the one BOARD_TEST_POSTGRES_URL names); ``new_database()`` gives each
    caller its own empty database."""

    cluster: Cluster | None
    base_url: str
    _count: itertools.count[int]

    def new_database(self) -> str:
        if self.cluster is None:
            return self.base_url
        return self.cluster.create_database(f"board_{next(self._count)}")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    url = os.environ.get("BOARD_TEST_POSTGRES_URL")
    if url:
        yield PostgresCluster(None, url, itertools.count())
        return
    with throwaway_cluster("board-pg-", durable=False) as cluster:
        if cluster is None:
            reason = "PostgreSQL leg: no initdb found (install postgresql or set BOARD_TEST_POSTGRES_URL)"
            if os.environ.get("BOARD_TEST_REQUIRE_POSTGRES") == "1":
                pytest.fail(reason + " but BOARD_TEST_REQUIRE_POSTGRES=1")
            pytest.skip(reason)
        yield PostgresCluster(cluster, "", itertools.count())


# --- backends ----------------------------------------------------------------------------------------------


@dataclass
class Backend:
    """Where a test server keeps its data: ``new_database_url()`` gives a fresh, empty database."""

    name: str
    workdir: Path
    cluster: PostgresCluster | None
    _count: itertools.count[int]

    def new_database_url(self) -> str:
        if self.cluster is not None:
            return self.cluster.new_database()
        return f"sqlite:///{self.workdir / f'board-{next(self._count)}.db'}"


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    workdir = tmp_path_factory.mktemp(f"board-{request.param}")
    cluster = request.getfixturevalue("postgres_cluster") if request.param == "postgres" else None
    return Backend(request.param, workdir, cluster, itertools.count())


# This test process's shared server of each backend, once started (see ``board_server``).
_SHARED_BOARDS: dict[str, RunningServer] = {}


@pytest.fixture(scope="session")
def board_server(backend: Backend, session_processes: Processes) -> RunningServer:
    """One server per backend, shared by the tests that only need a working board. It keeps the default
    process count (one per core), so the multi-process path is what these tests go through.

    pytest sets ``backend`` (a parametrized session fixture) up again each time the tests of a process switch
    from one backend to the other, which under xdist happens at most work units: the server of a backend
    started first is kept and served again, instead of a new one each time (2 s of CPU to start, and the
    earlier ones idle until the session ends)."""
    server = _SHARED_BOARDS.get(backend.name)
    if server is None or server.proc.poll() is not None:
        server = start_board_server(
            session_processes, backend.new_database_url(), backend.workdir, server_processes=None
        )
        _SHARED_BOARDS[backend.name] = server
    return server


MemberFactory = Callable[..., Member]


@pytest.fixture(scope="session")
def admin(board_server: RunningServer) -> Iterator[Member]:
    """An admin of the shared server (granted with ``board-server admin grant``)."""
    made = board_server.make_admin()
    yield made
    made.client.close()


@pytest.fixture
def members(board_server: RunningServer) -> Iterator[MemberFactory]:
    """``members(name)``: a new signed-in user of the shared server; their clients are closed afterwards."""
    made: list[Member] = []

    def make(name: str = "Member", *, email: str | None = None) -> Member:
        member = board_server.sign_up(name, email=email)
        made.append(member)
        return member

    yield make
    for member in made:
        member.client.close()


@pytest.fixture
def member(members: MemberFactory) -> Member:
    """A fresh user of the shared server, signed in."""
    return members()


@pytest.fixture
def client(member: Member) -> BoardClient:
    """The signed-in client of ``member``: writes are made as that user."""
    return member.client


@pytest.fixture
def anonymous(board_server: RunningServer) -> Iterator[BoardClient]:
    """A client of the shared server without a token."""
    with board_server.client() as board:
        yield board
