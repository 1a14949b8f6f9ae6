"""The audit log with several server processes: each appends whole lines (audit_append_handler) while the
supervisor's AuditRotator rotates the file by size; no line is lost, torn or written into a rotated-away file
that is then dropped. A writer follows a rotation at its next check; its lines read as logging.Formatter's."""

from __future__ import annotations

import logging
import multiprocessing
import time
from pathlib import Path

import pytest

from board_server.runtime.config import Settings
from board_server.runtime.logs import AUDIT_FORMAT, AuditRotator, audit_append_handler

LINES = 3000  # per writer process: ~3 rotations at MAX_BYTES, fewer than the backups kept
MAX_BYTES = 200_000
BACKUPS = 5


def _settings(path: Path) -> Settings:
    return Settings(audit_log_path=path, audit_log_max_bytes=MAX_BYTES, audit_log_backups=BACKUPS)


def _append(path: Path, writer: int) -> None:
    """A server process's side (spawned): LINES audit lines through the handler the server processes use."""
    audit = logging.getLogger("board.audit.test")
    audit.propagate = False
    audit.setLevel(logging.INFO)
    audit.addHandler(audit_append_handler(_settings(path)))
    for line in range(LINES):
        audit.info("Post created; id=%d; user_id=%d; by=user:%d", line, writer, writer)


@pytest.mark.integration
def test_lines_of_several_processes_survive_rotation_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    rotator = AuditRotator(_settings(path), interval_s=0.01)
    rotator.start()
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append, args=(path, writer)) for writer in (1, 2)]
    try:
        for process in writers:
            process.start()
        for process in writers:
            process.join(timeout=120)
            assert process.exitcode == 0
    finally:
        rotator.stop()
        for process in writers:
            if process.is_alive():
                process.kill()

    files = [path, *(Path(f"{path}.{n}") for n in range(1, BACKUPS + 1))]
    rotated = [f for f in files[1:] if f.exists()]
    assert rotated, "the file never rotated: the test proves nothing"
    assert len(rotated) < BACKUPS, "a backup was dropped: lines may be gone for that reason alone"
    lines = [line for f in files if f.exists() for line in f.read_text(encoding="utf-8").splitlines()]
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines), "a torn line"
    for writer in (1, 2):
        ids = sorted(
            int(line.split("id=", 1)[1].split(";", 1)[0]) for line in lines if f"by=user:{writer} " in line
        )
        assert ids == list(range(LINES)), f"writer {writer}: lines lost or doubled"


def test_a_writer_follows_a_rotation_at_its_next_check_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    handler = audit_append_handler(_settings(path), reopen_check_s=0.2)
    audit = logging.getLogger("board.audit.follow")
    audit.propagate = False
    audit.setLevel(logging.INFO)
    audit.addHandler(handler)
    try:
        audit.info("line 1")
        path.rename(tmp_path / "audit.log.1")  # what the rotator does
        audit.info("line 2")  # before the writer's next check: at the end of the renamed file
        time.sleep(0.25)
        audit.info("line 3")
    finally:
        audit.removeHandler(handler)
        handler.close()
    rotated = (tmp_path / "audit.log.1").read_text(encoding="utf-8").splitlines()
    assert [line.split(" | ")[2] for line in rotated] == ["line 1", "line 2"]
    current = path.read_text(encoding="utf-8").splitlines()
    assert [line.split(" | ")[2] for line in current] == ["line 3"]


def test_an_audit_line_is_what_logging_formatter_writes(tmp_path: Path) -> None:
    handler = audit_append_handler(_settings(tmp_path / "audit.log"))
    try:
        for created in (1_796_600_000.25, 1_796_600_000.999, 1_796_600_001.0):
            record = logging.LogRecord("board.audit", logging.INFO, "/a/posts.py", 1, "id=%d", (7,), None)
            record.created, record.msecs = created, (created - int(created)) * 1000
            assert handler.format(record) == logging.Formatter(AUDIT_FORMAT).format(record)
    finally:
        handler.close()
