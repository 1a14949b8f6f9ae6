"""Where `board` keeps access tokens: one JSON file, mode 0600, holding a session per server target.

    $XDG_CONFIG_HOME/board/token   (default ~/.config/board/token; the folder is made 0700)
    {"sessions": {"127.0.0.1:50051": {"token": "…", "user_id": 7, "email": "…", "expire_time": "…"}}}

A stored token is only ever sent to the target that issued it. ``BOARD_TOKEN``, when set, wins over the file
(scripts, CI) and goes to whatever target the command uses. A token file that other users can read is refused
rather than used, as ssh does with keys. Writes replace the file atomically under a lock, so that two
`board login` runs for different targets do not lose each other's session.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TOKEN_ENV = "BOARD_TOKEN"  # noqa: S105 - the variable's name, not a secret
FILE_MODE = 0o600
DIR_MODE = 0o700


class CredentialsError(Exception):
    """The token file cannot be used (unreadable, not ours to trust, or not a token file)."""


@dataclass(frozen=True)
class StoredSession:
    """What `board login` keeps for one target (the token is never shown by repr)."""

    target: str
    token: str = field(repr=False)
    user_id: int
    email: str
    expire_time: str  # RFC 3339, as the server sent it


@dataclass(frozen=True)
class Credential:
    """The token a command will send, and where it came from (``BOARD_TOKEN`` or the file's path)."""

    token: str = field(repr=False)
    source: str
    session: StoredSession | None = None

    @property
    def from_env(self) -> bool:
        return self.session is None


def token_file(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/board/token`` (``~/.config/board/token`` when that is unset or relative)."""
    env = os.environ if env is None else env
    config = env.get("XDG_CONFIG_HOME", "")
    if not config or not os.path.isabs(config):
        config = os.path.join(env.get("HOME") or str(Path.home()), ".config")
    return Path(config) / "board" / "token"


def find_credential(target: str, env: Mapping[str, str] | None = None) -> Credential | None:
    """The token for ``target``: BOARD_TOKEN if set, else the stored session; None when signed out.

    Raises CredentialsError for a token file that is unsafe or unreadable.
    """
    env = os.environ if env is None else env
    from_env = env.get(TOKEN_ENV, "").strip()
    if from_env:
        return Credential(from_env, TOKEN_ENV)
    path = token_file(env)
    session = _read(path).get(target)
    if session is None:
        return None
    return Credential(session.token, str(path), session)


def stored_session(target: str, env: Mapping[str, str] | None = None) -> StoredSession | None:
    """The session `board login` stored for ``target`` (whatever BOARD_TOKEN says)."""
    return _read(token_file(env)).get(target)


def save_session(session: StoredSession, env: Mapping[str, str] | None = None) -> Path:
    """Store ``session`` for its target (replacing the previous one); return the file's path."""
    path = token_file(env)
    with _locked(path):
        sessions = _read(path)
        sessions[session.target] = session
        _write(path, sessions)
    return path


def forget_session(target: str, env: Mapping[str, str] | None = None) -> bool:
    """Remove the stored session of ``target``; True if there was one."""
    path = token_file(env)
    if not path.exists():
        return False
    with _locked(path):
        sessions = _read(path)
        if sessions.pop(target, None) is None:
            return False
        _write(path, sessions)
    return True


def _read(path: Path) -> dict[str, StoredSession]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsError(f"cannot read the token file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise CredentialsError(
            f"the token file {path} can be read by other users (mode {stat.S_IMODE(mode):04o}): "
            f"remove it and run `board login` again, or `chmod 600 {path}` if only you have used it"
        )
    try:
        payload: Any = json.loads(path.read_text(encoding="utf-8"))
        return {
            str(target): StoredSession(
                target=str(target),
                token=str(entry["token"]),
                user_id=int(entry["user_id"]),
                email=str(entry.get("email", "")),
                expire_time=str(entry.get("expire_time", "")),
            )
            for target, entry in payload["sessions"].items()
        }
    except OSError as exc:
        raise CredentialsError(f"cannot read the token file {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CredentialsError(
            f"{path} is not a board token file: remove it and run `board login` again"
        ) from None


def _write(path: Path, sessions: Mapping[str, StoredSession]) -> None:
    """Replace the file atomically; the new file is 0600 from its first byte (O_EXCL, explicit mode)."""
    body = {"sessions": {target: _entry(s) for target, s in sorted(sessions.items())}}
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump(body, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def _entry(session: StoredSession) -> dict[str, Any]:
    entry = asdict(session)
    del entry["target"]
    return entry


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<file>.lock`` beside the token file (made with the 0700 folder if needed)."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    descriptor = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
