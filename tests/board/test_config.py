"""Settings precedence and the SQLite connection setup, in-process (no server needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from sqlalchemy import text

from board_server.runtime.config import add_arguments, load_settings
from board_server.storage.engine import migrate, open_database


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_live_under_the_working_directory(tmp_path: Path) -> None:
    settings = load_settings(parse(), env={}, cwd=tmp_path)
    assert settings.address == "127.0.0.1:50051"
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'board.db'}"
    assert settings.audit_log_path == tmp_path / "var" / "log" / "board-audit.log"


def test_flag_beats_environment_beats_default(tmp_path: Path) -> None:
    env = {
        "BOARD_ADDRESS": "0.0.0.0:7000",
        "BOARD_ALLOW_PLAINTEXT": "on",  # a public address with auth on: TLS, or a proxy that terminates it
        "BOARD_DATABASE_URL": "sqlite:///env.db",
        "BOARD_WORKERS": "3",
    }
    from_env = load_settings(parse(), env=env, cwd=tmp_path)
    assert (from_env.address, from_env.database_url, from_env.worker_threads) == (
        "0.0.0.0:7000",
        "sqlite:///env.db",
        3,
    )
    from_flags = load_settings(parse("--address", "127.0.0.1:0", "--workers", "5"), env=env, cwd=tmp_path)
    assert (from_flags.address, from_flags.worker_threads) == ("127.0.0.1:0", 5)
    assert from_flags.database_url == "sqlite:///env.db"


def test_accounts_are_on_by_default(tmp_path: Path) -> None:
    settings = load_settings(parse(), env={}, cwd=tmp_path)
    assert settings.auth and settings.sign_up_open and not settings.reads_need_sign_in
    assert settings.token_lifetime_s == 30 * 86400
    assert not settings.tls and not settings.allow_plaintext


def test_account_settings_from_flags_and_environment(tmp_path: Path) -> None:
    env = {
        "BOARD_SIGN_UP": "closed",
        "BOARD_READ_ACCESS": "signed-in",
        "BOARD_TOKEN_LIFETIME": "12h",
        "BOARD_TLS_CERT_FILE": "/etc/board/cert.pem",
        "BOARD_TLS_KEY_FILE": "/etc/board/key.pem",
        "BOARD_ADDRESS": "0.0.0.0:443",
    }
    from_env = load_settings(parse(), env=env, cwd=tmp_path)
    assert not from_env.sign_up_open and from_env.reads_need_sign_in
    assert from_env.token_lifetime_s == 12 * 3600
    assert from_env.tls_cert_file == Path("/etc/board/cert.pem") and from_env.tls
    flags = parse("--sign-up", "open", "--read-access", "anyone", "--token-lifetime", "90s", "--auth", "off",
                  "--address", "127.0.0.1:0")  # fmt: skip
    from_flags = load_settings(flags, env=env, cwd=tmp_path)
    assert from_flags.sign_up_open and not from_flags.reads_need_sign_in and not from_flags.auth
    assert from_flags.token_lifetime_s == 90


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (("--address", "0.0.0.0:7000"), {}),
        (("--address", "[::]:7000"), {}),
        (("--address", "10.1.2.3:7000"), {}),
        ((), {"BOARD_ADDRESS": "0.0.0.0:7000"}),
    ],
)
def test_public_address_with_auth_on_needs_tls_or_allow_plaintext(
    tmp_path: Path, argv: tuple[str, ...], env: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="plaintext"):
        load_settings(parse(*argv), env=env, cwd=tmp_path)
    assert load_settings(parse(*argv, "--allow-plaintext", "on"), env=env, cwd=tmp_path).allow_plaintext
    assert load_settings(parse(*argv, "--allow-plaintext"), env=env, cwd=tmp_path).allow_plaintext  # alone
    allowed = {**env, "BOARD_ALLOW_PLAINTEXT": "on"}
    assert load_settings(parse(*argv), env=allowed, cwd=tmp_path).allow_plaintext
    tls = ("--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem")
    assert load_settings(parse(*argv, *tls), env=env, cwd=tmp_path).tls


@pytest.mark.parametrize("address", ["127.0.0.1:0", "127.8.9.10:7000", "[::1]:7000", "localhost:7000"])
def test_loopback_needs_no_tls(tmp_path: Path, address: str) -> None:
    settings = load_settings(parse("--address", address), env={}, cwd=tmp_path)
    assert settings.auth and not settings.tls


@pytest.mark.parametrize("address", ["0.0.0.0:7000", "[::]:7000", "192.168.1.5:7000"])
def test_auth_off_is_refused_on_a_public_address(tmp_path: Path, address: str) -> None:
    with pytest.raises(ValueError, match="--auth off"):
        load_settings(parse("--address", address, "--auth", "off"), env={}, cwd=tmp_path)
    with pytest.raises(ValueError, match="--auth off"):  # not even behind TLS or a proxy
        load_settings(
            parse("--address", address, "--auth", "off", "--allow-plaintext", "on"),
            env={"BOARD_TLS_CERT_FILE": "c.pem", "BOARD_TLS_KEY_FILE": "k.pem"},
            cwd=tmp_path,
        )
    with pytest.raises(ValueError, match="--auth off"):
        load_settings(parse("--address", address), env={"BOARD_AUTH": "off"}, cwd=tmp_path)
    assert not load_settings(parse("--auth", "off"), env={}, cwd=tmp_path).auth  # loopback: allowed


def test_every_limit_is_on_by_default(tmp_path: Path) -> None:
    settings = load_settings(parse(), env={}, cwd=tmp_path)
    assert settings.max_calls_per_peer == 64 and settings.trusted_proxies == ()
    assert (settings.request_timeout_s, settings.upload_timeout_s) == (10.0, 300.0)
    assert settings.grpc_receive_limit == 1024 * 1024
    assert settings.max_concurrent_rpcs == 2048


def test_limits_from_flags_and_environment(tmp_path: Path) -> None:
    env = {"BOARD_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7, 2001:db8::/32", "BOARD_REQUEST_TIMEOUT": "3s"}
    settings = load_settings(
        parse("--max-calls-per-peer", "500", "--upload-timeout", "2m"), env=env, cwd=tmp_path
    )
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32")
    assert (settings.max_calls_per_peer, settings.request_timeout_s, settings.upload_timeout_s) == (
        500,
        3,
        120,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("--address", "no-port"),
        ("--workers", "0"),
        ("--log-level", "LOUD"),
        ("--grace", "-1"),
        ("--auth", "maybe"),
        ("--sign-up", "invite-only"),
        ("--read-access", "admins"),
        ("--token-lifetime", "59s"),
        ("--token-lifetime", "forever"),
        ("--tls-cert-file", "cert.pem"),  # without its key
        ("--tls-key-file", "key.pem"),  # without its certificate
        ("--max-calls-per-peer", "0"),
        ("--request-timeout", "0"),
        ("--upload-timeout", "0"),
        ("--trusted-proxies", "10.0.0.0/33"),
        ("--trusted-proxies", "proxy.internal"),
        ("--client-limits", "off", "--address", "0.0.0.0:1", "--allow-plaintext"),  # off: loopback only
        ("--password-hashing", "md5"),
        ("--event-loop", "trio"),
        ("--password-hashing", "cheapest", "--address", "0.0.0.0:1", "--allow-plaintext"),  # loopback only
        ("--password-hashing", "cheapest", "--http-address", "0.0.0.0:1", "--allow-plaintext"),
    ],
)
def test_malformed_setting_is_a_value_error(tmp_path: Path, argv: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        load_settings(parse(*argv), env={}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("s3cret", "not a database URL"),
        ("postgresql+psycopg://board:s3cret@db:port/board", "not a database URL"),
        ("mysql://board:s3cret@db/board", "not mysql+mysqldb"),
        ("postgresql+asyncpg://board:s3cret@db/board", "not postgresql+asyncpg"),
        ("sqlite+aiosqlite:///s3cret.db", "not sqlite+aiosqlite"),
    ],
)
def test_a_database_url_the_board_cannot_use_is_refused_without_showing_it(
    tmp_path: Path, url: str, says: str
) -> None:
    for argv, env in ((("--database-url", url), {}), ((), {"BOARD_DATABASE_URL": url})):
        with pytest.raises(ValueError) as refused:
            load_settings(parse(*argv), env=env, cwd=tmp_path)
        message = str(refused.value)
        assert message.startswith(argv[0] if argv else "BOARD_DATABASE_URL") and says in message
        assert "s3cret" not in message


def test_the_databases_the_board_runs_on_are_taken(tmp_path: Path) -> None:
    for url in ("sqlite:///board.db", "postgresql+psycopg://board:pw@db:5432/board", "postgresql://db/board"):
        assert load_settings(parse("--database-url", url), env={}, cwd=tmp_path).database_url == url


def test_sqlite_connections_are_configured_for_a_server(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path / 'nested' / 'b.db'}")
    try:
        migrate(database.engine)
        with database.read() as conn:
            pragmas = {name: conn.execute(text(f"PRAGMA {name}")).scalar() for name in
                       ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")}  # fmt: skip
    finally:
        database.dispose()
    # synchronous 2 = FULL: a commit is fsynced before it is acknowledged.
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "synchronous": 2, "busy_timeout": 30_000}


def test_the_event_loop_is_uvloop_unless_told_asyncio(tmp_path: Path) -> None:
    assert load_settings(parse(), env={}, cwd=tmp_path).event_loop == "uvloop"
    assert load_settings(parse(), env={"BOARD_EVENT_LOOP": "asyncio"}, cwd=tmp_path).event_loop == "asyncio"
    told = load_settings(parse("--event-loop", "uvloop"), env={"BOARD_EVENT_LOOP": "asyncio"}, cwd=tmp_path)
    assert told.event_loop == "uvloop"


def test_request_ids_are_remembered_a_day_unless_told_otherwise(tmp_path: Path) -> None:
    assert load_settings(parse(), env={}, cwd=tmp_path).request_id_ttl_s == 86400
    assert load_settings(parse(), env={"BOARD_REQUEST_ID_TTL": "2h"}, cwd=tmp_path).request_id_ttl_s == 7200
    with pytest.raises(ValueError, match="request id TTL must be > 0"):
        load_settings(parse("--request-id-ttl", "0"), env={}, cwd=tmp_path)


def test_the_test_fault_is_off_by_default_comes_only_from_its_variable_and_only_on_loopback(
    tmp_path: Path,
) -> None:
    assert load_settings(parse(), env={}, cwd=tmp_path).test_fault == ""
    fault = "exit-after-commit:CreatePost:/tmp/fired"
    assert load_settings(parse(), env={"BOARD_TEST_FAULT": fault}, cwd=tmp_path).test_fault == fault
    with pytest.raises(SystemExit):
        parse("--test-fault", fault)  # no flag: a command line cannot arm it
    public = {"BOARD_TEST_FAULT": fault, "BOARD_ADDRESS": "0.0.0.0:50051", "BOARD_ALLOW_PLAINTEXT": "on"}
    with pytest.raises(ValueError, match="BOARD_TEST_FAULT is for tests only"):
        load_settings(parse(), env=public, cwd=tmp_path)
    with pytest.raises(ValueError, match="must be exit-after-commit:METHOD:FILE"):
        load_settings(parse(), env={"BOARD_TEST_FAULT": "exit-after-commit:CreatePost"}, cwd=tmp_path)


def test_the_http_listener_defaults_to_loopback_8088_and_turns_off_with_none(tmp_path: Path) -> None:
    assert load_settings(parse(), env={}, cwd=tmp_path).http_address == "127.0.0.1:8088"
    for off in ("", "none", "off"):
        assert load_settings(parse("--http-address", off), env={}, cwd=tmp_path).http_address == ""
    assert load_settings(parse(), env={"BOARD_HTTP_ADDRESS": "none"}, cwd=tmp_path).http_address == ""


def test_a_public_http_address_follows_the_grpc_address_rules(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"plaintext on '0\.0\.0\.0'"):
        load_settings(parse("--http-address", "0.0.0.0:8088"), env={}, cwd=tmp_path)
    with pytest.raises(ValueError, match="--auth off"):
        load_settings(parse("--http-address", "0.0.0.0:8088", "--auth", "off"), env={}, cwd=tmp_path)
    tls = ("--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem")
    assert load_settings(parse("--http-address", "0.0.0.0:8088", *tls), env={}, cwd=tmp_path).tls
    with pytest.raises(ValueError, match="HOST:PORT"):
        load_settings(parse("--http-address", "8088"), env={}, cwd=tmp_path)


def test_cors_origins_are_origins_and_never_a_wildcard(tmp_path: Path) -> None:
    settings = load_settings(
        parse("--cors-origin", "https://app.example.org, http://localhost:5173/"), env={}, cwd=tmp_path
    )
    assert settings.cors_origins == ("https://app.example.org", "http://localhost:5173")
    assert load_settings(parse(), env={}, cwd=tmp_path).cors_origins == ()
    for bad in ("*", "app.example.org", "https://app.example.org/path", "ftp://x.example"):
        with pytest.raises(ValueError, match="--cors-origin"):
            load_settings(parse("--cors-origin", bad), env={}, cwd=tmp_path)
