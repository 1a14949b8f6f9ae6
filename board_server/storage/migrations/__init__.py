"""The Alembic migrations of the board's schema: versions/ holds one file a revision, in a line, each named
after its revision (0001_users_posts_comments.py is revision "0001")."""

from __future__ import annotations

from pathlib import Path


def head_revision() -> str:
    """The newest revision, read from the file names: a database already there starts without loading Alembic
    (storage/engine.py ``migrate``); tests/board/test_schema.py checks the names against Alembic's own
    revisions."""
    return max(
        path.name.split("_", 1)[0] for path in (Path(__file__).parent / "versions").glob("[0-9]*_*.py")
    )
