"""Pages of lists: validated page sizes and opaque page tokens signed with the deployment's secret.

A token is ``base64url(version ‖ HMAC-SHA256(key, payload)[:16] ‖ payload)``; the payload names the list,
a digest of the query it belongs to (filter, order, parent) and the cursor (the last row's sort key and id).
The key is created on first start and kept in the database (table deployment_secrets), so every replica
accepts the tokens of every other. Anything that fails the MAC, names another list or query, or carries a
cursor outside the valid range is INVALID_ARGUMENT — never an exception further down.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import IntegrityError

from board_server.core.errors import FieldViolation, InvalidArgument
from board_server.core.limits import MAX_ID
from board_server.storage import secrets as secret_rows
from board_server.storage.engine import Database

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
PAGE_TOKEN_SECRET = "page_token_key"  # noqa: S105 - the name of the secret's row, not a secret
_VERSION = b"\x02"
_MAC_BYTES = 16
_MAX_TOKEN_CHARS = 2048
# Made once: json.dumps with options makes an encoder per call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: the rows and the token of the next page ("" on the last page)."""

    items: Sequence[T]
    next_page_token: str


@dataclass(frozen=True)
class PageRequest:
    """A validated list request: how many rows, and the cursor after which the page starts (None: first)."""

    size: int
    cursor: Mapping[str, Any] | None

    @property
    def after_id(self) -> int:
        """For lists ordered by id: the id after which the page starts (0 for the first page)."""
        return int(self.cursor["a"]) if self.cursor else 0


def query_digest(*parts: object) -> str:
    """A short digest of what a token is bound to (filter text, order, parent id, ...)."""
    text = _COMPACT_JSON.encode([str(p) for p in parts])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PageTokens:
    """Signs and checks page tokens with one deployment secret."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the page-token key must have at least 16 bytes")
        self._key = key

    def encode(self, resource: str, query: str, cursor: Mapping[str, Any]) -> str:
        """The token of the page after ``cursor`` in the list ``resource`` bound to ``query``."""
        payload = _COMPACT_JSON.encode({"r": resource, "q": query, "c": cursor}).encode()
        mac = hmac.digest(self._key, payload, "sha256")[:_MAC_BYTES]
        return base64.urlsafe_b64encode(_VERSION + mac + payload).decode().rstrip("=")

    def decode(self, resource: str, query: str, token: str) -> dict[str, Any] | None:
        """The cursor in ``token``; None when it is not a valid token of this list and query."""
        if len(token) > _MAX_TOKEN_CHARS or not token.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        version, mac, payload = raw[:1], raw[1 : 1 + _MAC_BYTES], raw[1 + _MAC_BYTES :]
        expected = hmac.digest(self._key, payload, "sha256")[:_MAC_BYTES]
        if version != _VERSION or not hmac.compare_digest(mac, expected):
            return None
        try:  # signed by us, so well-formed; checked anyway, as a key might leak
            decoded = json.loads(payload)
        except (ValueError, RecursionError):
            return None
        if not isinstance(decoded, dict) or decoded.get("r") != resource or decoded.get("q") != query:
            return None
        cursor = decoded.get("c")
        return cursor if isinstance(cursor, dict) and _cursor_in_range(cursor) else None

    def request(
        self,
        resource: str,
        query: str,
        page_size: int,
        page_token: str,
        validate_cursor: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> PageRequest:
        """Validate page_size/page_token of a list; raise InvalidArgument (fields page_size, page_token)."""
        violations: list[FieldViolation] = []
        if page_size < 0:
            violations.append(FieldViolation("page_size", "must not be negative"))
        cursor: Mapping[str, Any] | None = None
        if page_token:
            cursor = self.decode(resource, query, page_token)
            if cursor is None or (validate_cursor is not None and not validate_cursor(cursor)):
                violations.append(
                    FieldViolation(
                        "page_token",
                        "is not a page token of this list with this filter and order; pass the "
                        "next_page_token you received",
                    )
                )
        if violations:
            raise InvalidArgument(violations)
        size = DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
        return PageRequest(size=size, cursor=cursor)

    def id_page(self, resource: str, query: str, page_size: int, page_token: str) -> PageRequest:
        """``request`` for a list ordered by id: the cursor is ``{"a": last id}``."""
        return self.request(resource, query, page_size, page_token, _valid_id_cursor)

    def cut(
        self, resource: str, query: str, rows: Sequence[T], request: PageRequest, last_id: Callable[[T], int]
    ) -> Page[T]:
        """Cut the ``size + 1`` rows fetched into a page; the extra row only says that another page exists."""
        if len(rows) > request.size:
            items = rows[: request.size]
            return Page(items, self.encode(resource, query, {"a": last_id(items[-1])}))
        return Page(rows, "")


def _valid_id_cursor(cursor: Mapping[str, Any]) -> bool:
    after = cursor.get("a")
    return isinstance(after, int) and not isinstance(after, bool) and 0 <= after <= MAX_ID


def _cursor_in_range(cursor: Mapping[str, Any]) -> bool:
    """Every value a scalar and every integer an id-sized one (no nesting, no huge numbers)."""
    for value in cursor.values():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if not -MAX_ID <= value <= MAX_ID:
                return False
        elif isinstance(value, float):
            if not math.isfinite(value):
                return False
        elif isinstance(value, str):
            if len(value) > 64:
                return False
        else:
            return False
    return True


def load_page_tokens(db: Database) -> PageTokens:
    """PageTokens with the deployment's key: read from the database, or created there on first start.

    Two servers starting at once on an empty database both try to create it; the loser's insert fails on
    the primary key and it reads the winner's, so every replica signs with the same key.
    """
    existing = db.query(lambda conn: secret_rows.read_secret(conn, PAGE_TOKEN_SECRET))
    if existing is None:
        try:
            fresh = secrets.token_bytes(32)
            db.write(lambda conn: secret_rows.add_secret(conn, PAGE_TOKEN_SECRET, fresh, datetime.now(UTC)))
        except IntegrityError:
            pass
        existing = db.query(lambda conn: secret_rows.read_secret(conn, PAGE_TOKEN_SECRET))
    if existing is None:  # pragma: no cover - the insert above either committed or lost to another's
        raise RuntimeError("could not create the page-token key")
    return PageTokens(existing)
