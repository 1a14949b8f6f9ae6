"""Where a benchmark run's cores went: PostgreSQL's server found from a URL, a process tree's CPU read by pid
(new members included) and the machine's idle time. Runs no benchmark; starts a throw-away cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest

from bench.postgres import Cluster, local_server_pid, postgres_bin, throwaway_cluster
from bench.procfs import descendants, idle_seconds, tree_cpu_seconds
from seg_handler.launcher.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL installed (apt-get install postgresql)")
    with throwaway_cluster("bench-cpu-pg-", durable=False, stop_mode="immediate") as started:
        assert started is not None
        yield started


def test_the_server_behind_a_url_is_its_postmaster_with_every_backend_below(cluster: Cluster) -> None:
    pid = local_server_pid(cluster.url())
    assert pid is not None
    assert (cluster.base / "data" / "postmaster.pid").read_text().split()[0] == str(pid)
    with psycopg.connect(cluster.url().replace("postgresql+psycopg", "postgresql")) as connection:
        backend = connection.info.backend_pid
        assert backend in descendants(pid)
        before = tree_cpu_seconds(pid)
        assert backend in before  # a backend started after a first reading is in the next one
        connection.execute("SELECT count(*) FROM generate_series(1, 3000000)").fetchone()
        after = tree_cpu_seconds(pid)
    assert after[backend] - before[backend] > 0.05


def test_no_server_pid_for_a_database_that_does_not_answer() -> None:
    assert local_server_pid(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere") is None


def test_a_busy_child_is_read_by_pid_and_idle_time_is_in_seconds_of_all_cores() -> None:
    wall, idle = time.monotonic(), idle_seconds()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        spent = tree_cpu_seconds(busy.pid)[busy.pid]
    finally:
        busy.kill()
        busy.wait()
    idled, wall = idle_seconds() - idle, time.monotonic() - wall
    assert 0.1 < spent <= wall + 0.05
    # Never more than every core idle all along (ticks read as seconds, not as ticks).
    assert 0.0 <= idled <= wall * (os.cpu_count() or 1) + 0.05
