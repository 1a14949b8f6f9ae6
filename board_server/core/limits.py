"""Sizes every layer agrees on: field lengths (the tables' columns, the use cases' validation, the proto's
comments) and the id range. Defined once here; each is enforced before the database sees a value."""

from __future__ import annotations

NAME_MAX = 100
EMAIL_MAX = 254  # also of an email's canonical form (core/emails.py)
# A client's address as the limits key it (an IPv6 address with a zone fits; a longer one is cut).
PEER_MAX = 100
TITLE_MAX = 200
POST_CONTENT_MAX = 10_000
COMMENT_CONTENT_MAX = 2_000
FILENAME_MAX = 255
FAILURE_REASON_MAX = 1000
LABEL_MAX = 100
# Ids are signed 64-bit on PostgreSQL; a larger one in a request or a page token is refused, not overflowed.
MAX_ID = 2**63 - 1
