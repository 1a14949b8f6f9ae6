"""Throw-away PostgreSQL clusters for the benchmarks and the tests.

``throwaway_cluster()`` runs initdb into a new temporary folder, starts the cluster on a free loopback port
(its socket in that folder too), and stops and removes it afterwards. As root, every PostgreSQL command runs
as the ``postgres`` user (initdb refuses root). ``durable=False`` is for tests: no fsync at all, which a
benchmark must never measure.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.procfs import parent_of
from seg_handler.launcher.processes import free_port

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries (initdb, pg_ctl), or None when none are installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def as_postgres(args: list[str]) -> list[str]:
    """``args`` run as the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class Cluster:
    """A cluster in ``base`` listening on HOST:``port``; user ``postgres``, trust authentication."""

    bindir: Path
    base: Path
    port: int
    options: str

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), *args]
        return subprocess.run(as_postgres(command), check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self.pg_ctl("-o", self.options, "-l", str(self.base / "pg.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> bool:
        """Stop the cluster (``immediate``: as a crash would); whether it stopped."""
        done = self.pg_ctl("-m", mode, "-w", "stop", check=False)
        if done.returncode != 0 and (self.base / "data" / "postmaster.pid").exists():
            logger.error("PostgreSQL did not stop (%s): %s", self.base, done.stderr.strip())
            return False
        return True

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database``."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create the empty database ``name``; return its SQLAlchemy URL."""
        import psycopg

        dsn = f"host={HOST} port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def throwaway_cluster(
    prefix: str, *, durable: bool, max_connections: int = 200, stop_mode: str = "fast"
) -> Iterator[Cluster | None]:
    """A started cluster, or None when no PostgreSQL binaries are installed; stopped (``stop_mode``) and
    removed afterwards (kept, and logged, when it would not stop)."""
    bindir = postgres_bin()
    if bindir is None:
        yield None
        return
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
    initdb = [str(bindir / "initdb"), "-D", str(base / "data"), "-A", "trust", "-U", "postgres"]
    port = free_port()
    options = f"-p {port} -k {base} -c listen_addresses={HOST} -c max_connections={max_connections}"
    if not durable:
        initdb.append("--no-sync")
        options += " -c fsync=off"
    cluster = Cluster(bindir, base, port, options)
    try:
        subprocess.run(as_postgres(initdb), check=True, capture_output=True, timeout=120)
        cluster.start()
        yield cluster
    finally:
        if cluster.stop(stop_mode):
            shutil.rmtree(base, ignore_errors=True)


def local_server_pid(url: str) -> int | None:
    """The pid of the PostgreSQL server (the postmaster) behind ``url`` when it runs on this machine: the
    parent of the backend that answers us. None when that backend is not a process here (another machine,
    a container) or the server cannot be reached."""
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as connection:
            row = connection.execute("SELECT pg_backend_pid()").fetchone()
    except psycopg.Error:
        logger.warning("could not ask the database for its server's pid", exc_info=True)
        return None
    backend = row[0] if row else 0
    try:  # a pid of another pid namespace (a container) may name an unrelated process here
        if not Path(f"/proc/{backend}/comm").read_text().startswith("postgres"):
            return None
    except OSError:
        return None
    return parent_of(backend)  # the postmaster


@contextmanager
def benchmark_database(database: str = "board_bench") -> Iterator[str | None]:
    """A fresh cluster on a free loopback port with its default durability (fsync on); yield a SQLAlchemy
    URL of an empty database, or None when no PostgreSQL binaries are installed. Stopped and removed after."""
    with throwaway_cluster("board-bench-pg-", durable=True, max_connections=300) as cluster:
        if cluster is None:
            yield None
            return
        url = cluster.create_database(database)
        logger.info("throw-away PostgreSQL cluster in %s, port %d", cluster.base, cluster.port)
        yield url
