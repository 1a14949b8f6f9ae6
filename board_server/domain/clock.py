"""Time as the use cases see it: now, in UTC, and an update_time that always advances."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def now() -> datetime:
    return datetime.now(UTC)


def later_than(previous: datetime) -> datetime:
    """Now, but strictly after ``previous`` so that update_time always advances."""
    return max(now(), previous + timedelta(microseconds=1))
