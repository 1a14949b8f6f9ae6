"""docs/operations.md's configuration reference is what board_server/runtime/config.py says."""

from __future__ import annotations

from board_server.runtime.config import OPTIONS
from tests.docs import config_reference


def test_the_reference_in_the_docs_is_generated_from_the_options() -> None:
    current = config_reference.DOC.read_text()
    wanted = config_reference.replace_section(current, config_reference.render_section())
    assert current == wanted, "docs/operations.md is stale: run `python -m tests.docs.config_reference`"


def test_every_flag_and_environment_variable_is_in_the_reference() -> None:
    section = config_reference.render_section()
    missing = [o.flag for o in OPTIONS if f"`{o.flag}`" not in section]
    missing += [o.env for o in OPTIONS if f"`{o.env}`" not in section]
    assert missing == []


def test_durations_are_shown_the_way_the_flags_take_them() -> None:
    shown = [config_reference.duration_text(s) for s in (0.5, 10, 60, 300, 1800, 3600, 30 * 86400)]
    assert shown == ["0.5s", "10s", "60s", "5m", "30m", "1h", "30d"]
