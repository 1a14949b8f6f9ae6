"""Board fixtures: real `board-server` subprocesses on port 0, over SQLite and over PostgreSQL.

The PostgreSQL leg uses BOARD_TEST_POSTGRES_URL when set, otherwise starts a throw-away cluster (initdb +
pg_ctl on a free port, trust auth, socket in a temporary folder; as the `postgres` user when run as root).
Without PostgreSQL binaries it is skipped with the reason, unless BOARD_TEST_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.board import BoardClient
from tests.support import REPO_ROOT, Processes, free_port, wait_for

BOARD_SERVER = REPO_ROOT / ".venv" / "bin" / "board-server"
LISTENING = re.compile(r"listening on (\S+):(\d+)")


@dataclass
class RunningServer:
    """A board-server subprocess and where to reach it."""

    proc: subprocess.Popen[bytes]
    name: str
    port: int
    database_url: str
    audit_log: Path
    processes: Processes

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.processes.log_text(self.name)

    def client(self, timeout: float = 20.0) -> BoardClient:
        return BoardClient(self.target, timeout=timeout)


_names = itertools.count()


def start_board_server(
    processes: Processes, database_url: str, workdir: Path, *, extra: tuple[str, ...] = ()
) -> RunningServer:
    """Start `board-server` on 127.0.0.1:0 and wait for its 'listening on' line; return it with its port."""
    name = f"board-{next(_names)}"
    audit = workdir / f"{name}-audit.log"
    workdir.mkdir(parents=True, exist_ok=True)
    args = [str(BOARD_SERVER), "--address", "127.0.0.1:0", "--database-url", database_url, "--auth", "off"]
    proc = processes.start([*args, "--audit-log", str(audit), *extra], name=name, cwd=workdir)
    found: list[int] = []

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"board-server exited with {proc.returncode}:\n{processes.log_text(name)}")
        match = LISTENING.search(processes.log_text(name))
        if match:
            found.append(int(match.group(2)))
        return bool(match)

    wait_for(f"{name} to listen", listening, timeout=30)
    return RunningServer(proc, name, found[0], database_url, audit, processes)


# --- PostgreSQL --------------------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


@dataclass
class PostgresCluster:
    """A throw-away cluster; ``new_database()`` gives each caller its own empty database."""

    host: str
    port: int
    owned: bool
    base_url: str
    _count: itertools.count[int]

    def new_database(self) -> str:
        if not self.owned:
            return self.base_url
        import psycopg

        name = f"board_{next(self._count)}"
        with psycopg.connect(
            f"host={self.host} port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{name}"


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    url = os.environ.get("BOARD_TEST_POSTGRES_URL")
    if url:
        yield PostgresCluster("", 0, False, url, itertools.count())
        return
    required = os.environ.get("BOARD_TEST_REQUIRE_POSTGRES") == "1"
    bindir = _postgres_bin()
    if bindir is None:
        reason = "PostgreSQL leg: no initdb found (install postgresql or set BOARD_TEST_POSTGRES_URL)"
        if required:
            pytest.fail(reason + " but BOARD_TEST_REQUIRE_POSTGRES=1")
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="board-pg-"))
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(base, pg.pw_uid, pg.pw_gid)
    data, port = base / "data", free_port()
    initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]
    subprocess.run(_as_postgres(initdb), check=True, capture_output=True)
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
    start = [*pg_ctl, "-o", options, "-l", str(base / "pg.log"), "-w", "start"]
    subprocess.run(_as_postgres(start), check=True, capture_output=True)
    try:
        yield PostgresCluster("127.0.0.1", port, True, "", itertools.count())
    finally:
        subprocess.run(_as_postgres([*pg_ctl, "-m", "fast", "-w", "stop"]), check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


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


@pytest.fixture(scope="session")
def board_server(backend: Backend, session_processes: Processes) -> RunningServer:
    """One server per backend, shared by the tests that only need a working board."""
    return start_board_server(session_processes, backend.new_database_url(), backend.workdir)


@pytest.fixture
def client(board_server: RunningServer) -> Iterator[BoardClient]:
    with board_server.client() as board:
        yield board
