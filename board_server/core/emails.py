"""The canonical form of an email address: what makes two spellings name one account.

Trimmed, Unicode NFKC, case-folded (and NFKC again, so that the form is stable: applying it twice changes
nothing). Computed in Python, never by the database, whose ``lower()`` folds ASCII only on SQLite and follows
the collation on PostgreSQL: ``KATE@…`` and ``\\u212aate@…`` (KELVIN SIGN), ``Émile@…`` and ``émile@…``
(composed or not), ``STRASSE@…`` and ``straße@…`` are each one address.
"""

from __future__ import annotations

import unicodedata


def canonical_email(email: str) -> str:
    """The canonical form of ``email`` (see the module docstring)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", email.strip()).casefold())
