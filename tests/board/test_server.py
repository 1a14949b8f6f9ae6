"""The server as a whole: races, audit log, grpcurl, health, CLI, durability, shutdown, migrations."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from clients.board import AlreadyExistsError, BoardClient, BoardClientError
from tests.board.conftest import BOARD_SERVER, Backend, RunningServer, start_board_server
from tests.support import REPO_ROOT, Processes, wait_for

GRPCURL = REPO_ROOT / ".venv" / "bin" / "grpcurl"
BOARD_CLI = REPO_ROOT / ".venv" / "bin" / "board"
AUDIT_LINE = re.compile(
    r"^\| \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \| (?P<level>[A-Z]+) \| (?P<message>.+) \| "
    r"(?P<file>[\w.]+) \| (?P<func>\w+) \|$"
)


def email() -> str:
    return f"r-{uuid.uuid4().hex[:12]}@example.org"


def race_one_email(targets: list[str], attempts: int = 50) -> tuple[int, list[BoardClientError]]:
    """Fire ``attempts`` CreateUsers with one email (in varying case) at once; return successes, errors."""
    address = email()
    clients = [BoardClient(target, timeout=60) for target in targets]
    start = threading.Barrier(attempts)

    def attempt(i: int) -> BoardClientError | None:
        variant = address.upper() if i % 2 else address
        start.wait()
        try:
            clients[i % len(clients)].create_user(f"racer {i}", variant)
        except BoardClientError as exc:
            return exc
        return None

    try:
        with ThreadPoolExecutor(attempts) as pool:
            outcomes = list(pool.map(attempt, range(attempts)))
    finally:
        for client in clients:
            client.close()
    errors = [o for o in outcomes if o is not None]
    return attempts - len(errors), errors


def test_fifty_concurrent_creates_with_one_email_give_one_success(board_server: RunningServer) -> None:
    successes, errors = race_one_email([board_server.target])
    assert successes == 1
    assert all(isinstance(e, AlreadyExistsError) for e in errors), {e.code for e in errors}


def test_race_across_two_server_processes_on_one_database(
    board_server: RunningServer, backend: Backend, processes: Processes
) -> None:
    second = start_board_server(processes, board_server.database_url, backend.workdir)
    successes, errors = race_one_email([board_server.target, second.target])
    assert successes == 1
    assert all(isinstance(e, AlreadyExistsError) for e in errors), {e.code for e in errors}


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.create_user("nul\x00name", email()),
        lambda c: c.create_user("Ada", "a\x00b@example.org"),
        lambda c: c.create_user("ü" * 100, "ü@exämple.org"),
        lambda c: c.get_user(2**63 - 1),
        lambda c: c.get_user(-(2**63)),
        lambda c: c.list_posts(user_id=-5),
        lambda c: c.list_posts(page_size=2**31 - 1),
        lambda c: c.list_posts(page_size=-(2**31)),
        lambda c: c.list_posts(user_id=2**63 - 1),
        lambda c: c.list_comments(2**63 - 1, page_token="x" * 10_000),
        lambda c: c.create_post(2**63 - 1, "t" * 200, "c" * 10_000),
        lambda c: c.create_comment(-1, -1, ""),
        lambda c: c.update_post(2**63 - 1, paths=["title", "title"], title="t"),
        lambda c: c.update_comment(1, paths=["content.x"]),
        lambda c: c.delete_comment(0),
    ],
)
def test_odd_input_never_yields_unknown_or_internal(client: BoardClient, call: object) -> None:
    assert callable(call)
    try:
        call(client)
    except BoardClientError as exc:
        assert exc.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), exc


def test_audit_log_records_changes_and_not_found(board_server: RunningServer, client: BoardClient) -> None:
    user = client.create_user("Audited", email())
    client.update_user(user.id, name="Audited Too")
    missing = 10**12 + 42
    with pytest.raises(BoardClientError):
        client.get_user(missing)
    post = client.create_post(user.id, "t", "c")
    client.delete_post(post.id)

    def lines() -> list[str]:
        return board_server.audit_log.read_text().splitlines()

    wanted = {
        ("INFO", f"User created; id={user.id}", "create_user"),
        ("INFO", f"User updated; id={user.id}; fields=name", "update_user"),
        ("WARNING", f"User not found; id={missing}", "get_user"),
        ("INFO", f"Post created; id={post.id}; user_id={user.id}", "create_post"),
        ("INFO", f"Post deleted; id={post.id}", "delete_post"),
    }
    wait_for("audit lines", lambda: len(lines()) > 0, timeout=5)
    parsed = set()
    for line in lines():
        match = AUDIT_LINE.match(line)
        assert match, f"malformed audit line: {line!r}"
        assert match["file"] == "service.py"
        parsed.add((match["level"], match["message"], match["func"]))
    assert wanted <= parsed


def grpcurl(*args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["-d", data] if data is not None else []
    return subprocess.run(
        [str(GRPCURL), "-plaintext", *extra, *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_grpcurl_lists_describes_calls_and_checks_health(board_server: RunningServer) -> None:
    target = board_server.target
    listed = grpcurl(target, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"board.v1.BoardService", "grpc.health.v1.Health"} <= set(listed.stdout.split())

    described = grpcurl(target, "describe", "board.v1.BoardService")
    assert described.returncode == 0, described.stderr
    assert "rpc CreateUser ( .board.v1.CreateUserRequest ) returns ( .board.v1.User );" in described.stdout

    address = email()
    created = grpcurl(
        target, "board.v1.BoardService/CreateUser", data=json.dumps({"name": "Curl", "email": address})
    )
    assert created.returncode == 0, created.stderr
    user = json.loads(created.stdout)
    assert user["email"] == address and (user.get("createTime") or user.get("create_time"))
    fetched = grpcurl(target, "board.v1.BoardService/GetUser", data=json.dumps({"id": user["id"]}))
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads(fetched.stdout) == user

    invalid = grpcurl(target, "board.v1.BoardService/CreateUser", data='{"name": "", "email": "x"}')
    assert "InvalidArgument" in invalid.stderr

    for service in ("", "board.v1.BoardService"):
        health = grpcurl(target, "grpc.health.v1.Health/Check", data=json.dumps({"service": service}))
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout) == {"status": "SERVING"}


def run_cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BOARD_CLI), "--target", target, *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_cli_json_round_trip(board_server: RunningServer) -> None:
    target, address = board_server.target, email()
    created = run_cli(target, "--json", "users", "create", "--name", "Ada", "--email", address)
    assert created.returncode == 0, created.stderr
    user = json.loads(created.stdout)
    assert user["name"] == "Ada" and user["email"] == address
    post = json.loads(
        run_cli(
            target, "--json", "posts", "create", "--user", user["id"], "--title", "T", "--content", "C"
        ).stdout
    )
    listed = json.loads(run_cli(target, "--json", "posts", "list", "--user", user["id"]).stdout)
    assert [p["id"] for p in listed["posts"]] == [post["id"]] and listed["next_page_token"] == ""
    table = run_cli(target, "users", "get", user["id"])
    assert table.returncode == 0 and address in table.stdout

    duplicate = run_cli(target, "--json", "users", "create", "--name", "Ada", "--email", address.upper())
    assert duplicate.returncode == 1
    assert json.loads(duplicate.stderr)["error"]["code"] == "ALREADY_EXISTS"
    invalid = run_cli(target, "--json", "users", "create", "--name", " ", "--email", "bad")
    fields = {v["field"] for v in json.loads(invalid.stderr)["error"]["field_violations"]}
    assert invalid.returncode == 1 and fields == {"name", "email"}


def test_acknowledged_writes_survive_kill_9(backend: Backend, processes: Processes) -> None:
    server = start_board_server(processes, backend.new_database_url(), backend.workdir)
    with server.client(timeout=5) as client:
        author = client.create_user("Durable", email()).id
    acknowledged: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def write() -> None:
        with server.client(timeout=5) as client:
            while not stop.is_set():
                try:
                    post = client.create_post(author, "durable", "x" * 200)
                except BoardClientError:
                    return  # the server is gone
                with lock:
                    acknowledged.append(post.id)

    writers = [threading.Thread(target=write) for _ in range(6)]
    for writer in writers:
        writer.start()
    wait_for("some acknowledged writes", lambda: len(acknowledged) >= 100, timeout=30, interval=0.02)
    os.killpg(server.proc.pid, signal.SIGKILL)  # mid-flight: writers are still sending
    server.proc.wait(timeout=10)
    stop.set()
    for writer in writers:
        writer.join(timeout=10)

    restarted = start_board_server(processes, server.database_url, backend.workdir)
    with restarted.client() as client:
        stored = {p.id for p in client.iter_posts(user_id=author, page_size=1000)}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged writes lost"


def test_sigterm_under_load_drains_and_keeps_every_acknowledged_write(
    processes: Processes, tmp_path: Path
) -> None:
    # Shutdown does not depend on the database, so this runs once, on SQLite.
    server = start_board_server(processes, f"sqlite:///{tmp_path / 'drain.db'}", tmp_path)
    with server.client() as client:
        author = client.create_user("Bye", email()).id
    acknowledged: list[int] = []
    failures: list[grpc.StatusCode] = []
    stop = threading.Event()

    def write() -> None:
        with server.client(timeout=10) as client:
            while not stop.is_set():
                try:
                    acknowledged.append(client.create_post(author, "drain", "x").id)
                except BoardClientError as exc:
                    failures.append(exc.code)
                    return

    writers = [threading.Thread(target=write) for _ in range(8)]
    for writer in writers:
        writer.start()
    wait_for("writes in flight", lambda: len(acknowledged) >= 50, timeout=30, interval=0.02)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    stop.set()
    for writer in writers:
        writer.join(timeout=10)
    assert "stopped" in server.log()
    # Calls arriving after the listener closed are refused (UNAVAILABLE) or, caught in the instant of the
    # shutdown, CANCELLED before their handler ran; nothing fails with an error of ours.
    assert set(failures) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, failures
    restarted = start_board_server(processes, server.database_url, tmp_path)
    with restarted.client() as client:
        stored = {p.id for p in client.iter_posts(user_id=author, page_size=1000)}
    assert set(acknowledged) <= stored


def test_migrate_subcommand_creates_schema(tmp_path: Path) -> None:
    # The migration itself runs on every server start of both backends; this checks the subcommand once.
    database = tmp_path / "migrated.db"
    done = subprocess.run(
        [str(BOARD_SERVER), "migrate", "--database-url", f"sqlite:///{database}"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(database) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert {"users", "posts", "comments", "alembic_version"} <= tables
    assert "ix_users_email_lower" in indexes
    assert mode == "wal"


def test_listening_line_reports_bound_port(board_server: RunningServer) -> None:
    assert f"listening on 127.0.0.1:{board_server.port}" in board_server.log()
    assert board_server.port != 0
    time.sleep(0)  # the line is written before the first request is accepted
