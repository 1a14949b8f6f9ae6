"""The Alembic migrations of the board's schema (versions/, one file a revision, in a line)."""

# The newest revision in versions/: a database already there starts without loading Alembic
# (storage/engine.py ``migrate``); tests/board/test_schema.py checks it against Alembic's own head.
HEAD_REVISION = "0007"
