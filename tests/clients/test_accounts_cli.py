"""`board login` / `whoami` / `logout`, the token file, BOARD_TOKEN, passwords and TLS, against a real server.

Secrets never show: every run here asserts that neither the password nor the access token appears in what
`board` printed, and the password-prompt tests drive the installed script through a pseudo-terminal to check
that what is typed is not echoed.
"""

from __future__ import annotations

import json
import os
import pty
import select
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from clients.board import BoardClient, UnauthenticatedError
from clients.credentials import token_file
from tests.board.conftest import PASSWORD, Member, RunningServer, new_email, sign_up
from tests.clients.conftest import Cli, Ran, make_cli, start_tls_board
from tests.support import REPO_ROOT, Processes

BOARD = REPO_ROOT / ".venv" / "bin" / "board"


def stored(config_home: Path) -> dict[str, dict[str, object]]:
    sessions: dict[str, dict[str, object]] = json.loads((config_home / "board" / "token").read_text())[
        "sessions"
    ]
    return sessions


def assert_no_secrets(ran: Ran, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in ran.out and secret not in ran.err


def test_login_whoami_logout_round_trip(
    cli: Cli, member: Member, board: RunningServer, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    assert cli("whoami").code == 1

    login = cli("login", "--email", member.email, stdin=member.password + "\n")
    assert login.code == 0, login.both
    assert f"signed in as Ada <{member.email}> (user #{member.id}) on {board.target}" in login.out
    path = token_file()
    assert path == config / "board" / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    session = stored(config)[board.target]
    token = str(session["token"])
    assert session["user_id"] == member.id and len(token) >= 43  # 256 bits, base64
    assert member.password not in path.read_text()
    assert_no_secrets(login, member.password, token)

    whoami = cli("whoami")
    assert whoami.code == 0, whoami.both
    assert f"Ada <{member.email}> (user #{member.id}) on {board.target}" in whoami.out
    assert f"token from {path}" in whoami.out
    assert_no_secrets(whoami, token)

    created = cli("--json", "posts", "create", "--title", "mine", "--content", "as the signed-in user")
    assert created.code == 0, created.both
    assert json.loads(created.out)["user_id"] == str(member.id)

    logout = cli("logout")
    assert logout.code == 0, logout.both
    assert "signed out; the stored token is forgotten" in logout.out
    assert board.target not in stored(config)
    with BoardClient(board.target, token=token) as revoked, pytest.raises(UnauthenticatedError):
        revoked.get_user(member.id)  # revoked on the server, not only forgotten here
    assert cli("whoami").code == 1
    assert "not signed in" in cli("logout").out


def test_board_token_from_the_environment(cli: Cli, member: Member, board: RunningServer) -> None:
    token = member.client.token
    assert token is not None
    env = {"BOARD_TOKEN": token}
    created = cli("--json", "posts", "create", "--title", "env", "--content", "BOARD_TOKEN", env=env)
    assert created.code == 0, created.both
    assert json.loads(created.out)["user_id"] == str(member.id)
    whoami = cli("whoami", env=env)
    assert whoami.code == 0, whoami.both
    assert "valid token from BOARD_TOKEN" in whoami.out
    assert_no_secrets(whoami, token)

    logout = cli("logout", env=env)
    assert logout.code == 0 and "BOARD_TOKEN still holds the revoked token: unset it" in logout.out
    refused = cli("posts", "create", "--title", "x", "--content", "y", env=env)
    assert refused.code == 1
    assert "error: UNAUTHENTICATED" in refused.err
    assert "sign in again: board login (and unset BOARD_TOKEN" in refused.err
    assert_no_secrets(refused, token)


def test_a_revoked_token_says_sign_in_again(cli: Cli, logged_in: Member, board: RunningServer) -> None:
    token = str(stored(token_file().parent.parent)[board.target]["token"])
    with BoardClient(board.target, token=token) as same_session:
        same_session.sign_out()  # revoked elsewhere (another terminal, a password change)
    for args in (("whoami",), ("posts", "create", "--title", "t", "--content", "c")):
        ran = cli(*args)
        assert ran.code == 1
        assert "error: UNAUTHENTICATED: the access token is unknown or revoked; sign in again" in ran.err
        assert ran.err.rstrip().endswith("sign in again: board login")
    as_json = cli("--json", "whoami")
    error = json.loads(as_json.err)["error"]
    assert error["code"] == "UNAUTHENTICATED" and error["hint"] == "sign in again: board login"


def test_an_expired_token_says_sign_in_again(cli: Cli, logged_in: Member, board: RunningServer) -> None:
    database = board.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:  # the clock moves on: every session of this user has expired
        db.execute(
            "UPDATE access_tokens SET expire_time = '2001-01-01 00:00:00.000000' WHERE user_id = ?",
            (logged_in.id,),
        )
    ran = cli("whoami")
    assert ran.code == 1
    assert "error: UNAUTHENTICATED: the access token has expired; sign in again" in ran.err
    assert ran.err.rstrip().endswith("sign in again: board login")
    again = cli("login", "--email", logged_in.email, stdin=logged_in.password + "\n")
    assert again.code == 0, again.both
    assert cli("whoami").code == 0


def test_writing_without_signing_in_says_sign_in_first(cli: Cli) -> None:
    ran = cli("posts", "create", "--title", "t", "--content", "c")
    assert ran.code == 1
    assert "error: UNAUTHENTICATED" in ran.err
    assert ran.err.rstrip().endswith("sign in first: board login")


def test_a_wrong_password_is_refused_without_a_hint_or_a_stored_token(
    cli: Cli, member: Member, tmp_path: Path
) -> None:
    ran = cli("login", "--email", member.email, stdin="not the password\n")
    assert ran.code == 1
    assert "error: UNAUTHENTICATED" in ran.err and "board login" not in ran.err
    assert_no_secrets(ran, "not the password")
    assert not (tmp_path / "config" / "board" / "token").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("login", "--email", "a@example.org", "--password", "hunter2hunter2"),
        ("login", "--email", "a@example.org", "--password=hunter2hunter2"),
        ("users", "create", "--name", "A", "--email", "a@example.org", "--password", "hunter2hunter2"),
    ],
)
def test_a_password_flag_is_refused_without_echoing_it(cli: Cli, args: tuple[str, ...]) -> None:
    ran = cli(*args)
    assert ran.code == 2
    assert "never taken from a flag" in ran.err
    assert_no_secrets(ran, "hunter2")


def test_users_create_reads_the_password_from_stdin(cli: Cli, board: RunningServer) -> None:
    email, password = new_email("grace"), "a long enough passphrase"
    created = cli("--json", "users", "create", "--name", "Grace", "--email", email, stdin=password + "\n")
    assert created.code == 0, created.both
    assert_no_secrets(created, password)
    assert "password" not in json.loads(created.out)
    login = cli("login", "--email", email, "--password-stdin", stdin=password + "\n")
    assert login.code == 0, login.both
    short = cli("users", "create", "--name", "G", "--email", new_email(), "--password-stdin", stdin="short\n")
    assert short.code == 1 and "INVALID_ARGUMENT" in short.err and "password" in short.err
    assert_no_secrets(short, "short\n")


def test_a_token_file_others_can_read_is_refused(cli: Cli, logged_in: Member) -> None:
    path = token_file()
    path.chmod(0o644)
    ran = cli("whoami")
    assert ran.code == 1
    assert "can be read by other users (mode 0644)" in ran.err


def test_a_stored_token_goes_only_to_the_target_that_issued_it(
    cli: Cli, logged_in: Member, board: RunningServer
) -> None:
    other_name = board.target.replace("127.0.0.1", "localhost")
    ran = cli("--target", other_name, "whoami")
    assert ran.code == 1
    assert f"not signed in on {other_name}" in ran.err


def test_tls_with_a_ca_file_flag_or_environment(
    processes: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server, ca_file = start_tls_board(processes, tmp_path / "tls")
    target = f"localhost:{server.port}"
    member = sign_up(target, "Tess", root_certificates=ca_file.read_bytes())
    member.client.close()
    cli = make_cli(target, tmp_path / "config", monkeypatch, capsys)
    login = cli("--ca-file", ca_file, "login", "--email", member.email, stdin=PASSWORD + "\n")
    assert login.code == 0, login.both
    whoami = cli("whoami", env={"BOARD_CA_FILE": str(ca_file)})
    assert whoami.code == 0 and f"Tess <{member.email}>" in whoami.out
    untrusted = cli("--tls", "--timeout", "3", "whoami")  # the system's roots do not know the test CA
    assert untrusted.code == 1 and "UNAVAILABLE" in untrusted.err
    plaintext = cli("--timeout", "3", "whoami")
    assert plaintext.code == 1 and "UNAVAILABLE" in plaintext.err
    missing = cli("--ca-file", tmp_path / "nope.pem", "whoami")
    assert missing.code == 2 and "cannot read the CA file" in missing.err


# --- the real script on a terminal ----------------------------------------------------------------------


def _on_terminal(args: list[str], typed: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `board ARGS` with a pseudo-terminal as its controlling terminal, typing each of ``typed`` after
    the next prompt (a line ending in ': '); return the exit status and everything the terminal showed."""
    pid, master = pty.fork()
    if pid == 0:  # the child: its stdin/stdout/stderr and /dev/tty are the terminal
        os.execve(str(BOARD), [str(BOARD), *args], env)
    shown = b""
    pending = list(typed)
    deadline = time.monotonic() + 120  # a hang fails the test instead of stalling the suite
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if pending and shown.rstrip(b" ").endswith(b":"):
                os.write(master, pending.pop(0).encode() + b"\n")
    finally:
        os.close(master)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_passwords_typed_at_the_prompt_are_not_echoed(board: RunningServer, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BOARD_TARGET": board.target,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "COLUMNS": "200",
    }
    env.pop("BOARD_TOKEN", None)
    email, password = new_email("tty"), "typed at a terminal 1"
    code, shown = _on_terminal(
        ["users", "create", "--name", "Terry", "--email", email], [password, password], env
    )
    assert code == 0, shown
    assert "Password:" in shown and "Repeat the password:" in shown
    assert password not in shown

    code, shown = _on_terminal(["login"], [email, password], env)  # the email is asked for too, and shown
    assert code == 0, shown
    assert f"Email: {email}" in shown and "Password:" in shown
    assert password not in shown
    assert f"signed in as Terry <{email}>" in shown

    code, shown = _on_terminal(
        ["--json", "users", "create", "--name", "T", "--email", new_email()], [password, password + "x"], env
    )
    assert code == 2 and "the passwords do not match" in shown
    assert password not in shown
