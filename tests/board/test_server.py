"""The server as a whole: races, audit log, grpcurl, health, CLI, durability, shutdown, migrations."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from clients.board import AlreadyExistsError, BoardClient, BoardClientError
from tests.board.conftest import (
    BOARD_SERVER,
    PASSWORD,
    Backend,
    Member,
    RunningServer,
    at_once,
    database_engine,
    grpcurl,
    new_email,
    sign_up,
    start_board_server,
)
from tests.support import REPO_ROOT, Processes, free_port, wait_for

logger = logging.getLogger(__name__)

DOMAIN_MODULES = {path.name for path in (REPO_ROOT / "board_server" / "domain").glob("*.py")}
BOARD_CLI = REPO_ROOT / ".venv" / "bin" / "board"
AUDIT_LINE = re.compile(
    r"^\| \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \| (?P<level>[A-Z]+) \| (?P<message>.+) \| "
    r"(?P<file>[\w.]+) \| (?P<func>\w+) \|$"
)


def race_one_email(targets: list[str], attempts: int = 24) -> tuple[int, list[BoardClientError]]:
    """Fire ``attempts`` sign-ups with one email (in varying case) at once; return successes, errors.

    Each sign-up hashes its password (argon2id, tenths of a second of CPU) before the insert, so a few dozen
    are a real race without holding a small machine's cores for half a minute.
    """
    address = new_email("r")

    def sign_up_as(client: BoardClient, n: int) -> None:
        client.create_user(f"racer {n}", address.upper() if n % 2 else address, PASSWORD)

    errors = [e for e in at_once(targets, attempts, sign_up_as) if e is not None]
    return attempts - len(errors), errors


def test_concurrent_sign_ups_with_one_email_give_one_success(board_server: RunningServer) -> None:
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


Call = Callable[[BoardClient], object]
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
DENIED, UNAUTHENTICATED = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED
BIG_ID = 2**63 - 1  # a valid id that names nothing
IDN_EMAIL = f"ü-{uuid.uuid4().hex[:8]}@exämple.org"  # an internationalised address is an address


@pytest.mark.parametrize(
    ("call", "code", "fields"),
    [
        (lambda c: c.create_user("nul\x00name", new_email(), PASSWORD), INVALID, ["name"]),
        (lambda c: c.create_user("Ada", "a\x00b@example.org", PASSWORD), INVALID, ["email"]),
        (lambda c: c.create_user("Ada", new_email(), "nul\x00" * 4), INVALID, ["password"]),
        (lambda c: c.create_user("Ada", new_email(), "ü" * 1025), INVALID, ["password"]),
        (lambda c: c.create_user("ü" * 101, new_email(), PASSWORD), INVALID, ["name"]),
        (lambda c: c.sign_in("nobody@example.org", "\x00" * 2000), UNAUTHENTICATED, []),
        (lambda c: c.sign_in("x" * 10_000, PASSWORD), INVALID, ["email"]),
        (lambda c: c.update_user(BIG_ID, password="new password 1"), DENIED, []),
        (lambda c: c.get_user(BIG_ID), NOT_FOUND, []),
        (lambda c: c.get_user(-(2**63)), INVALID, ["id"]),
        (lambda c: c.list_posts(user_id=-5), INVALID, ["user_id"]),
        (lambda c: c.list_posts(page_size=-(2**31)), INVALID, ["page_size"]),
        (lambda c: c.list_comments(BIG_ID, page_token="x" * 10_000), INVALID, ["page_token"]),
        (lambda c: c.create_post(BIG_ID, "t" * 200, "c" * 10_000), DENIED, []),  # as another user
        (lambda c: c.create_post(0, "t" * 201, "c" * 10_001), INVALID, ["content", "title"]),
        (lambda c: c.create_comment(-1, -1, ""), INVALID, ["content", "post_id", "user_id"]),
        (lambda c: c.update_post(BIG_ID, paths=["title", "title"], title="t"), NOT_FOUND, []),
        (lambda c: c.update_comment(1, paths=["content.x"]), INVALID, ["update_mask"]),
        (lambda c: c.delete_comment(0), INVALID, ["id"]),
    ],
)  # fmt: skip
def test_odd_input_is_refused_with_its_code_and_fields(
    client: BoardClient, call: Call, code: grpc.StatusCode, fields: list[str]
) -> None:
    with pytest.raises(BoardClientError) as refused:
        call(client)  # accepted: the test fails here ("DID NOT RAISE")
    assert refused.value.code == code, refused.value
    assert sorted(v.field for v in refused.value.violations) == fields, refused.value
    assert len(refused.value.message) < 300  # never an echo of what was sent


@pytest.mark.parametrize(
    ("call", "check"),
    [
        # At the limits, counted in characters (not bytes): 100 of a 2-byte letter, 1,024 for a password.
        (lambda c: c.create_user("ü" * 100, new_email(), PASSWORD), lambda u: u.name == "ü" * 100),
        (lambda c: c.create_user("Ada", IDN_EMAIL, PASSWORD), lambda u: u.email == IDN_EMAIL),
        (lambda c: c.create_user("Ada", new_email(), "ü" * 1024), lambda u: u.name == "Ada"),
        (lambda c: c.list_posts(page_size=2**31 - 1), lambda page: len(page.posts) <= 1000),  # 1,000 at most
        (lambda c: c.list_posts(user_id=BIG_ID), lambda page: not page.ListFields()),  # nobody's posts
    ],
)
def test_odd_input_within_the_rules_is_served(
    client: BoardClient, call: Call, check: Callable[[Any], bool]
) -> None:
    answer = call(client)
    assert check(answer), answer


def test_audit_log_names_the_actor_of_every_change_and_never_a_read(
    board_server: RunningServer, anonymous: BoardClient, admin: Member
) -> None:
    address = new_email("audited")
    user = anonymous.create_user("Audited", address, PASSWORD)  # sign-up: by anonymous
    with board_server.client() as audited:
        audited.sign_in(address, PASSWORD)
        audited.update_user(user.id, name="Audited Too")
        post = audited.create_post(0, "t", "c")
        comment = audited.create_comment(post.id, 0, "c")
        audited.delete_post(post.id)
        moderated = audited.create_post(0, "moderated", "c")
        admin.client.delete_post(moderated.id)  # by an admin: the admin is the actor
        missing = 10**12 + 42
        with pytest.raises(BoardClientError):
            audited.get_user(missing)  # a read: never audited, even when it finds nothing
        audited.get_user(user.id)
        audited.sign_out()
    granted = board_server.admin("grant", address)  # the operator, on the database
    assert granted.returncode == 0, granted.stderr

    me, boss = f"user:{user.id}", f"admin:{admin.id}"
    wanted = {
        ("INFO", f"User created; id={user.id}; by=anonymous", "create_user"),
        ("INFO", f"Signed in; user_id={user.id}; by={me}", "sign_in"),
        ("INFO", f"User updated; id={user.id}; fields=name; by={me}", "update_user"),
        ("INFO", f"Post created; id={post.id}; user_id={user.id}; by={me}", "create_post"),
        ("INFO", f"Comment created; id={comment.id}; post_id={post.id}; user_id={user.id}; by={me}",
         "create_comment"),
        ("INFO", f"Post deleted; id={post.id}; by={me}", "delete_post"),
        ("INFO", f"Post deleted; id={moderated.id}; by={boss}", "delete_post"),
        ("INFO", f"Signed out; user_id={user.id}; by={me}", "sign_out"),
        ("INFO", f"Admin granted; user_id={user.id}; by=operator", "grant_admin"),
    }  # fmt: skip

    def parsed() -> set[tuple[str, str, str]]:
        lines = set()
        for line in board_server.audit_log.read_text().splitlines():
            match = AUDIT_LINE.match(line)
            assert match, f"malformed audit line: {line!r}"
            assert match["file"] in DOMAIN_MODULES, line  # written by the use case itself
            lines.add((match["level"], match["message"], match["func"]))
        return lines

    # Server processes hand their records to the supervisor, which writes the file: wait for the last one.
    wait_for("the audit lines", lambda: wanted <= parsed(), timeout=20)
    audit_text = board_server.audit_log.read_text()
    assert str(missing) not in audit_text
    assert not any(func.startswith(("get_", "list_")) for _, _, func in parsed())
    assert PASSWORD not in audit_text
    # The failed read went to the ordinary log (the server's stderr) instead.
    wait_for("the not-found line", lambda: f"User not found; id={missing}" in board_server.log(), timeout=20)


def plaintext_grpcurl(
    *args: str, data: str | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    return grpcurl("-plaintext", *args, data=data, token=token)


def test_grpcurl_lists_describes_signs_in_calls_and_checks_health(board_server: RunningServer) -> None:
    target = board_server.target
    listed = plaintext_grpcurl(target, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"board.v1.BoardService", "grpc.health.v1.Health"} <= set(listed.stdout.split())

    described = plaintext_grpcurl(target, "describe", "board.v1.BoardService")
    assert described.returncode == 0, described.stderr
    assert "rpc CreateUser ( .board.v1.CreateUserRequest ) returns ( .board.v1.User );" in described.stdout
    assert "rpc SignIn ( .board.v1.SignInRequest ) returns ( .board.v1.SignInResponse );" in described.stdout

    address = new_email("curl")
    sign_up_request = {"name": "Curl", "email": address, "password": PASSWORD}
    created = plaintext_grpcurl(target, "board.v1.BoardService/CreateUser", data=json.dumps(sign_up_request))
    assert created.returncode == 0, created.stderr
    user = json.loads(created.stdout)
    assert user["email"] == address and (user.get("createTime") or user.get("create_time"))
    assert "password" not in user

    signed_in = plaintext_grpcurl(
        target, "board.v1.BoardService/SignIn", data=json.dumps({"email": address, "password": PASSWORD})
    )
    assert signed_in.returncode == 0, signed_in.stderr
    session = json.loads(signed_in.stdout)
    token = session.get("accessToken") or session["access_token"]
    assert session["user"] == user

    get_request = json.dumps({"id": user["id"]})
    fetched = plaintext_grpcurl(target, "board.v1.BoardService/GetUser", data=get_request, token=token)
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads(fetched.stdout) == user
    public = json.loads(plaintext_grpcurl(target, "board.v1.BoardService/GetUser", data=get_request).stdout)
    assert "email" not in public and public["name"] == "Curl"  # no token: no email

    post_request = json.dumps({"title": "From grpcurl", "content": "with a bearer token"})
    posted = plaintext_grpcurl(target, "board.v1.BoardService/CreatePost", data=post_request, token=token)
    assert posted.returncode == 0, posted.stderr
    assert json.loads(posted.stdout).get("userId", json.loads(posted.stdout).get("user_id")) == user["id"]
    anonymous_post = plaintext_grpcurl(target, "board.v1.BoardService/CreatePost", data=post_request)
    assert "Unauthenticated" in anonymous_post.stderr

    invalid = plaintext_grpcurl(target, "board.v1.BoardService/CreateUser", data='{"name": "", "email": "x"}')
    assert "InvalidArgument" in invalid.stderr

    for service in ("", "board.v1.BoardService"):
        health = plaintext_grpcurl(
            target, "grpc.health.v1.Health/Check", data=json.dumps({"service": service})
        )
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout) == {"status": "SERVING"}


def run_cli(
    target: str, *args: str, token: str | None = None, home: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    # A private HOME: the CLI must not pick up a `board login` file of whoever runs the tests.
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    env.pop("BOARD_TOKEN", None)
    if token is not None:
        env["BOARD_TOKEN"] = token
    given = {"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}
    return subprocess.run(
        [str(BOARD_CLI), "--target", target, *args],
        capture_output=True, text=True, timeout=30, check=False, env=env, **given,
    )  # fmt: skip


def test_cli_json_round_trip(board_server: RunningServer, member: Member, tmp_path: Path) -> None:
    target, token, home = board_server.target, member.client.token, tmp_path
    created = run_cli(
        target, "--json", "posts", "create", "--user", "0", "--title", "T", "--content", "C",
        token=token, home=home,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    post = json.loads(created.stdout)
    assert post["user_id"] == str(member.id)  # the token's user: the caller is the author
    listed = json.loads(
        run_cli(target, "--json", "posts", "list", "--user", str(member.id), home=home).stdout
    )
    assert [p["id"] for p in listed["posts"]] == [post["id"]] and listed["next_page_token"] == ""
    # Reads need no token; the email is shown only to the user themself.
    public = run_cli(target, "--json", "users", "get", str(member.id), home=home)
    assert public.returncode == 0, public.stderr
    assert json.loads(public.stdout)["name"] == member.user.name and member.email not in public.stdout
    own = run_cli(target, "--json", "users", "get", str(member.id), token=token, home=home)
    assert own.returncode == 0 and json.loads(own.stdout)["email"] == member.email
    table = run_cli(target, "users", "get", str(member.id), home=home)
    assert table.returncode == 0 and member.user.name in table.stdout

    anonymous = run_cli(
        target, "--json", "posts", "create", "--user", "0", "--title", "T", "--content", "C", home=home
    )
    assert anonymous.returncode == 1
    assert json.loads(anonymous.stderr)["error"]["code"] == "UNAUTHENTICATED"
    revoked = run_cli(target, "--json", "posts", "get", post["id"], token="not-a-token", home=home)
    assert revoked.returncode == 1
    assert json.loads(revoked.stderr)["error"]["code"] == "UNAUTHENTICATED"

    taken = sign_up(target, "Taken")
    taken.client.close()
    duplicate = run_cli(
        target,
        "--json",
        "users",
        "update",
        str(member.id),
        "--email",
        taken.email.upper(),
        token=token,
        home=home,
        stdin=member.password + "\n",  # one's own email: the current password first
    )
    assert duplicate.returncode == 1
    assert json.loads(duplicate.stderr)["error"]["code"] == "ALREADY_EXISTS"
    invalid = run_cli(
        target,
        "--json",
        "users",
        "update",
        str(member.id),
        "--name",
        " ",
        "--email",
        "bad",
        token=token,
        home=home,
    )
    violations = {v["field"] for v in json.loads(invalid.stderr)["error"]["field_violations"]}
    assert invalid.returncode == 1 and violations == {"user.name", "user.email"}


@dataclass
class WriteLoad:
    """Every write the load attempted, by title (each with its own request_id), and what came of it."""

    attempted: dict[str, str] = field(default_factory=dict)  # title → request_id
    acknowledged: set[str] = field(default_factory=set)
    retried: set[str] = field(default_factory=set)  # acknowledged only after a failed call (its retry)
    lock: threading.Lock = field(default_factory=threading.Lock)


def test_writes_under_kill_9_with_retries_are_never_lost_nor_doubled(
    backend: Backend, processes: Processes
) -> None:
    # A fixed port: the restarted server takes the place of the killed one, where the writers' retries go.
    address = ("--address", f"127.0.0.1:{free_port()}")
    server = start_board_server(processes, backend.new_database_url(), backend.workdir, extra=address)
    durable = server.sign_up("Durable")
    durable.client.close()
    author, token = durable.id, durable.client.token
    load = WriteLoad()
    stop = threading.Event()
    give_up = time.monotonic() + 120

    def write(writer: int) -> None:
        with server.client(timeout=5, token=token) as client:
            for n in itertools.count():
                if stop.is_set():
                    return
                title, request_id = f"w{writer}-{n}", str(uuid.uuid4())
                with load.lock:
                    load.attempted[title] = request_id
                # Every write is retried until it is answered: the channel's policy retries UNAVAILABLE a few
                # times, and this loop goes on with the same request_id while the server is down.
                while time.monotonic() < give_up:
                    try:
                        client.create_post(0, title, "x" * 200, request_id=request_id)
                    except BoardClientError:
                        with load.lock:
                            load.retried.add(title)
                        time.sleep(0.2)
                        continue
                    with load.lock:
                        load.acknowledged.add(title)
                    break

    writers = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for writer in writers:
        writer.start()
    wait_for("some acknowledged writes", lambda: len(load.acknowledged) >= 100, timeout=60, interval=0.02)
    os.killpg(server.proc.pid, signal.SIGKILL)  # mid-flight: writers are still sending
    server.proc.wait(timeout=10)
    with load.lock:
        in_flight = set(load.attempted) - load.acknowledged
        killed_at = len(load.acknowledged)
    # Which of the writes in flight had committed: their answers were lost, and only the request_id keeps
    # their retries from writing them twice.
    with database_engine(server.database_url) as engine, engine.connect() as conn:
        committed = {str(t) for (t,) in conn.execute(text("SELECT title FROM posts"))} & in_flight
    # Down until a write has failed past the channel's own retries (a quick restart could hide the kill).
    wait_for("a write that failed while the server was down", lambda: bool(load.retried), timeout=60)
    restarted = start_board_server(processes, server.database_url, backend.workdir, extra=address)
    wait_for("writes after the restart", lambda: len(load.acknowledged) >= killed_at + 50, timeout=60)
    stop.set()
    for writer in writers:
        writer.join(timeout=150)

    with restarted.client(token=token) as client:
        stored = Counter(p.title for p in client.iter_posts(user_id=author, page_size=1000))
    attempted, acknowledged = set(load.attempted), load.acknowledged
    counts = {
        "attempted": len(attempted),
        "acknowledged": len(acknowledged),
        "stored": sum(stored.values()),
        "duplicates": sum(n - 1 for n in stored.values()),
        "lost_acknowledged": len(acknowledged - set(stored)),
        "answered_after_a_failed_call": len(load.retried & acknowledged),
        "in_flight_at_the_kill": len(in_flight),
        "committed_but_unanswered_at_the_kill": len(committed),
    }
    logger.info("write load under kill -9 (%s): %s", backend.name, counts)
    assert counts["lost_acknowledged"] == 0 and counts["duplicates"] == 0, counts
    assert set(stored) <= attempted, counts
    assert load.retried, "no write met the kill: nothing was retried"
    assert acknowledged == attempted == set(stored), counts  # every write answered, once, in the end


def test_sigterm_under_load_drains_and_keeps_every_acknowledged_write(
    processes: Processes, tmp_path: Path
) -> None:
    # Shutdown does not depend on the database, so this runs once, on SQLite.
    server = start_board_server(processes, f"sqlite:///{tmp_path / 'drain.db'}", tmp_path)
    bye = server.sign_up("Bye")
    bye.client.close()
    author, token = bye.id, bye.client.token
    acknowledged: list[int] = []
    failures: list[grpc.StatusCode] = []
    stop = threading.Event()

    def write() -> None:
        with server.client(timeout=10, token=token) as client:
            while not stop.is_set():
                try:
                    acknowledged.append(client.create_post(0, "drain", "x").id)
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


@pytest.mark.integration
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
    assert {"users", "posts", "comments", "access_tokens", "sign_in_failures", "alembic_version"} <= tables
    assert {"ix_users_email_canonical", "ix_access_tokens_token_hash"} <= indexes
    assert mode == "wal"


def test_listening_line_reports_bound_port(board_server: RunningServer) -> None:
    assert f"listening on 127.0.0.1:{board_server.port}" in board_server.log()
    assert board_server.port != 0
    assert "event loop uvloop" in board_server.log()


def test_the_standard_event_loop_serves_every_process_when_asked(
    processes: Processes, tmp_path: Path
) -> None:
    server = start_board_server(
        processes,
        f"sqlite:///{tmp_path / 'asyncio.db'}",
        tmp_path,
        extra=("--event-loop", "asyncio", "--processes", "2"),
        server_processes=None,
    )
    member = sign_up(server.target, "Loop")
    with member.client as client:
        post = client.create_post(member.id, "on asyncio", "the standard library's loop")
        assert client.get_post(post.id).title == "on asyncio"
    log = server.log()
    assert log.count("event loop asyncio") == 2, log
    assert "event loop uvloop" not in log
