"""Request validation shared by the use cases: collect field violations, raise one InvalidArgument.

Messages name the field and the rule; they never echo more than a short excerpt of what was sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from board_server.core.emails import canonical_email
from board_server.core.errors import FieldViolation, InvalidArgument, excerpt
from board_server.core.limits import EMAIL_MAX

EMAIL_PATTERN = re.compile(r"[^@\s\x00]+@[^@\s.\x00]+(\.[^@\s.\x00]+)+")
IMMUTABLE_PATHS = frozenset({"id", "create_time", "update_time", "user_id", "post_id"})
PASSWORD_MIN, PASSWORD_MAX = 8, 1024
# AIP-155's request_id: a UUID4 in its canonical 8-4-4-4-12 form (either case).
REQUEST_ID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.I)


class Violations:
    """Collects field violations; ``raise_if_any`` raises one InvalidArgument naming all of them."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def text(self, field: str, value: str, max_len: int) -> None:
        if not value.strip():
            self.add(field, "must not be blank")
        elif len(value) > max_len:
            self.add(field, f"must be at most {max_len} characters (got {len(value)})")
        elif "\x00" in value:  # PostgreSQL text cannot hold NUL
            self.add(field, "must not contain NUL characters")

    def email(self, field: str, value: str) -> None:
        if len(value) > EMAIL_MAX:
            self.add(field, f"must be at most {EMAIL_MAX} characters (got {len(value)})")
        elif not EMAIL_PATTERN.fullmatch(value):
            self.add(field, "must be an email address like name@example.org")
        else:
            self.email_key(field, value)

    def email_key(self, field: str, value: str) -> None:
        """The canonical form (core/emails.py), which accounts are looked up by, fits too: a few
        compatibility characters (ligatures, U+FDFA) grow under NFKC."""
        if len(value) <= EMAIL_MAX < len(canonical_email(value)):
            self.add(
                field, f"must be at most {EMAIL_MAX} characters in its canonical form (NFKC, case-folded)"
            )

    def password(self, field: str, value: str, email: str) -> None:
        if len(value) < PASSWORD_MIN:
            self.add(field, f"must be at least {PASSWORD_MIN} characters")
        elif len(value) > PASSWORD_MAX:
            self.add(field, f"must be at most {PASSWORD_MAX} characters")
        elif "\x00" in value:
            self.add(field, "must not contain NUL characters")
        elif email and canonical_email(value) == canonical_email(email):
            self.add(field, "must not be the email address")

    def row_id(self, field: str, value: int) -> None:
        if value <= 0:
            self.add(field, "must be a positive id")

    def request_id(self, field: str, value: str) -> None:
        """Empty (no request_id), or a UUID4 string."""
        if value and not (len(value) == 36 and REQUEST_ID_PATTERN.fullmatch(value)):
            self.add(field, "must be a UUID4 string such as 2f1c6e0a-8d3b-4c2e-9a57-0b6d4e8f1a23, or empty")

    def fraction(self, field: str, value: float) -> None:
        if math.isnan(value) or not 0 <= value <= 1:
            self.add(field, "must be between 0 and 1")

    def mask(self, field: str, paths: Sequence[str], mutable: frozenset[str]) -> list[str]:
        """Check an update mask; return its paths without duplicates."""
        if not paths:
            self.add(field, "must name at least one field")
        for path in paths:
            if path in IMMUTABLE_PATHS:
                self.add(field, f"{excerpt(path)} cannot be changed")
            elif path not in mutable:
                self.add(field, f"unknown field {excerpt(path)}; allowed: {', '.join(sorted(mutable))}")
        return list(dict.fromkeys(paths))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def check_id(field: str, value: int) -> None:
    """Raise InvalidArgument unless ``value`` is a positive id."""
    violations = Violations()
    violations.row_id(field, value)
    violations.raise_if_any()
