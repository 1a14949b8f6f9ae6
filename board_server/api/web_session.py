"""The browser's session on the HTTP listener: the access token in an HttpOnly, SameSite=Strict cookie
(Secure under TLS), so that no script of the page ever holds it (docs/accounts.md says why, and what keeps
other sites from using it).

- SignIn with the request header ``Board-Session: cookie`` answers with the cookie and an empty
  ``access_token``; SignOut clears it. Without that header both behave exactly as over gRPC.
- A call without an ``authorization`` header is authenticated by the cookie, as if it carried
  ``authorization: Bearer <token>``, but only when the request comes from the listener's own origin (its
  ``Origin`` header, which browsers send with every POST, names the host it was sent to) — a page of
  another origin, even on the same site, cannot spend it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

COOKIE = "board_session"
SESSION_HEADER = "board-session"
SESSION_BY_COOKIE = "cookie"


@dataclass(frozen=True)
class Credentials:
    """What authenticates one HTTP request: an ``authorization`` value; whether it came from the cookie."""

    authorization: str | None
    from_cookie: bool = False


def same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header names the host (``Host`` header) the request was sent to."""
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == host.lower()


def credentials(headers: Mapping[str, str]) -> Credentials:
    """The credentials of a request whose (lower-case) headers are ``headers``: the ``authorization``
    header when present, else the session cookie of a same-origin request, else none."""
    authorization = headers.get("authorization")
    if authorization is not None:
        return Credentials(authorization)
    cookie_header = headers.get("cookie")
    if not cookie_header:
        return Credentials(None)
    origin = headers.get("origin")
    if origin is not None and not same_origin(origin, headers.get("host", "")):
        return Credentials(None)
    try:
        jar = SimpleCookie(cookie_header)
    except CookieError:
        return Credentials(None)
    morsel = jar.get(COOKIE)
    if morsel is None or not morsel.value:
        return Credentials(None)
    return Credentials(f"Bearer {morsel.value}", from_cookie=True)


def wants_cookie(headers: Mapping[str, str]) -> bool:
    """Whether a SignIn asks for the cookie session instead of the token in the answer."""
    return headers.get(SESSION_HEADER, "").strip().lower() == SESSION_BY_COOKIE


def session_cookie(token: str, max_age_s: int, *, secure: bool) -> str:
    """The Set-Cookie value that starts a browser session."""
    parts = [f"{COOKIE}={token}", "Path=/", f"Max-Age={max(0, max_age_s)}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def cleared_cookie(*, secure: bool) -> str:
    """The Set-Cookie value that ends a browser session."""
    return session_cookie("", 0, secure=secure)
