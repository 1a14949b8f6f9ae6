"""Settings precedence and the SQLite connection setup, in-process (no server needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from sqlalchemy import text

from board_server.config import Settings, add_arguments, load_settings
from board_server.database import migrate, open_database


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
    env = {"BOARD_ADDRESS": "0.0.0.0:7000", "BOARD_DATABASE_URL": "sqlite:///env.db", "BOARD_WORKERS": "3"}
    from_env = load_settings(parse(), env=env, cwd=tmp_path)
    assert (from_env.address, from_env.database_url, from_env.worker_threads) == (
        "0.0.0.0:7000",
        "sqlite:///env.db",
        3,
    )
    from_flags = load_settings(parse("--address", "127.0.0.1:0", "--workers", "5"), env=env, cwd=tmp_path)
    assert (from_flags.address, from_flags.worker_threads) == ("127.0.0.1:0", 5)
    assert from_flags.database_url == "sqlite:///env.db"


@pytest.mark.parametrize(
    "argv", [("--address", "no-port"), ("--workers", "0"), ("--log-level", "LOUD"), ("--grace", "-1")]
)
def test_malformed_setting_is_a_value_error(tmp_path: Path, argv: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        load_settings(parse(*argv), env={}, cwd=tmp_path)


def test_sqlite_connections_are_configured_for_a_server(tmp_path: Path) -> None:
    database = open_database(Settings(database_url=f"sqlite:///{tmp_path / 'nested' / 'b.db'}"))
    try:
        migrate(database.engine)
        with database.read() as conn:
            pragmas = {name: conn.execute(text(f"PRAGMA {name}")).scalar() for name in
                       ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")}  # fmt: skip
    finally:
        database.dispose()
    # synchronous 2 = FULL: a commit is fsynced before it is acknowledged.
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "synchronous": 2, "busy_timeout": 30_000}
