"""TorchServe's keys: renewed before they expire, and the inference key alone handed to the board.

TorchServe 0.12 writes ``key_file.json`` (0600) into its working directory with three keys: ``management`` and
``inference``, which expire after ``token_expiration_min``, and ``API``, which does not. Measured on 0.12:

- ``POST /token?type=inference`` (or ``type=management``) on the management port renews one key; it takes the
  **API key** (the management key is refused), answers 200 with an empty body and rewrites key_file.json;
- the old key stops working at once, and an expired key is refused (400 InvalidKeyException over REST,
  PERMISSION_DENIED over gRPC).

``KeyRenewer`` renews each key when half of its lifetime is left and keeps ``inference.key`` (the inference
key alone, mode 0600, replaced atomically) in step with key_file.json. The board reads that file on every call
(``--segmentation-token-file``) and never sees the management or API key. The launcher's ``run`` runs the
renewer as a thread; its ``start`` as a detached process (``renew``) tracked by ``renewer.pid`` and stopped by
its ``stop``; it also exits by itself once TorchServe is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from seg_handler.launcher import processes
from seg_handler.launcher.settings import REPO_ROOT

logger = logging.getLogger(__name__)

KINDS = ("management", "inference")
# Renew a key when this share of its lifetime is left: a renewal that fails has half a lifetime of retries.
RENEW_AT_REMAINING = 0.5
# Longest sleep between looks at key_file.json (TorchServe restarted by someone else writes new keys).
MAX_SLEEP_S = 60.0
RETRY_S = 2.0
DEFAULT_LIFETIME_MIN = 60.0  # TorchServe's default token_expiration_min
RENEWER_MODULE = "seg_handler.launcher"  # `python -m` this with `renew` runs a detached renewer


class KeyRenewalError(RuntimeError):
    """The keys cannot be read or renewed; the message says why (never the key)."""


@dataclass(frozen=True)
class Key:
    value: str
    expires: datetime | None  # None: does not expire (the API key)


def parse_expiration(text: str) -> datetime:
    """TorchServe's expiration time, e.g. ``2026-11-30T06:13:15.295082784Z`` (nanoseconds), as UTC."""
    stamp = text.strip().removesuffix("Z")
    if "." in stamp:
        whole, fraction = stamp.split(".", 1)
        stamp = f"{whole}.{fraction[:6]}"
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC)


def read_key_file(path: Path) -> dict[str, Key]:
    """The keys in TorchServe's key_file.json by kind (management, inference, API); raises KeyRenewalError."""
    try:
        raw = json.loads(path.read_text())
        keys: dict[str, Key] = {}
        for kind, entry in raw.items():
            expires = entry.get("expiration time")
            keys[kind] = Key(str(entry["key"]), parse_expiration(expires) if expires else None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyRenewalError(f"cannot read TorchServe's keys from {path}: {type(exc).__name__}") from exc
    missing = [kind for kind in (*KINDS, "API") if kind not in keys]
    if missing:
        raise KeyRenewalError(f"{path} has no {', '.join(missing)} key")
    return keys


def write_inference_key(path: Path, key: str) -> bool:
    """Write ``key`` alone to ``path`` (mode 0600, atomic replace); False when it already held that key."""
    with contextlib.suppress(OSError):
        if path.read_text().strip() == key:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def renew(management_url: str, api_key: str, kind: str, timeout_s: float = 10.0) -> None:
    """Ask TorchServe for a new ``kind`` key (it rewrites key_file.json); raises KeyRenewalError."""
    url = f"{management_url}/token?{urllib.parse.urlencode({'type': kind})}"
    request = urllib.request.Request(  # noqa: S310 - the management URL from our own config
        url, method="POST", headers={"Authorization": f"Bearer {api_key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            response.read()
    except urllib.error.HTTPError as exc:
        raise KeyRenewalError(f"TorchServe refused to renew the {kind} key: HTTP {exc.code}") from exc
    except (OSError, urllib.error.URLError) as exc:
        raise KeyRenewalError(f"cannot reach {management_url} to renew the {kind} key: {exc}") from exc


class KeyRenewer:
    """Renews TorchServe's expiring keys at half their lifetime and keeps ``inference_key_file`` in step."""

    def __init__(
        self, key_file: Path, inference_key_file: Path, management_url: str, lifetime: timedelta
    ) -> None:
        self.key_file = key_file
        self.inference_key_file = inference_key_file
        self.management_url = management_url
        self.lifetime = lifetime

    def step(self, now: datetime | None = None) -> float:
        """Renew what is due, sync the inference key file; the seconds until the next step is due.

        Raises KeyRenewalError when the keys cannot be read or a renewal fails.
        """
        keys = read_key_file(self.key_file)
        if write_inference_key(self.inference_key_file, keys["inference"].value):
            logger.info("wrote the current inference key to %s", self.inference_key_file)
        margin = self.lifetime * RENEW_AT_REMAINING
        moment = now or datetime.now(UTC)
        for kind in KINDS:
            expires = keys[kind].expires
            if expires is not None and expires - moment <= margin:
                renew(self.management_url, keys["API"].value, kind)
                keys = read_key_file(self.key_file)
                if keys[kind].expires == expires:
                    raise KeyRenewalError(
                        f"TorchServe said it renewed the {kind} key, but {self.key_file} did not change"
                    )
                if kind == "inference":
                    write_inference_key(self.inference_key_file, keys["inference"].value)
                logger.info("renewed TorchServe's %s key; it expires at %s", kind, keys[kind].expires)
        due = [k.expires - margin for k in (keys[kind] for kind in KINDS) if k.expires is not None]
        wait = min((d - (now or datetime.now(UTC))).total_seconds() for d in due) if due else MAX_SLEEP_S
        return min(MAX_SLEEP_S, max(RETRY_S / 4, wait))

    def run(self, stop: threading.Event, alive: Callable[[], bool] = lambda: True) -> None:
        """Step until ``stop`` is set or ``alive()`` turns False; failures are logged and retried soon."""
        while not stop.is_set() and alive():
            try:
                sleep_s = self.step()
            except KeyRenewalError as exc:
                logger.error("TorchServe key renewal failed (%s); retrying in %.0fs", exc, RETRY_S)
                sleep_s = RETRY_S
            deadline = time.monotonic() + sleep_s
            while not stop.is_set() and alive() and time.monotonic() < deadline:
                stop.wait(min(RETRY_S, max(0.0, deadline - time.monotonic())))


class RenewerThread:
    """A KeyRenewer in a daemon thread of this process (the launcher's ``run``)."""

    def __init__(self, renewer: KeyRenewer) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=renewer.run, args=(self._stop,), name="key-renewer", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


def lifetime_from_properties(properties: dict[str, str]) -> timedelta:
    """The keys' lifetime from TorchServe's config (``token_expiration_min``, TorchServe's default 60)."""
    return timedelta(minutes=float(properties.get("token_expiration_min") or DEFAULT_LIFETIME_MIN))


def start_detached(runtime_dir: Path, pid_file: Path, log_file: Path) -> int:
    """Start ``python -m seg_handler.launcher renew`` for ``runtime_dir`` in its own session; its pid, also
    written to ``pid_file``. It exits by itself when the TorchServe of ``runtime_dir`` is gone."""
    command = [sys.executable, "-m", RENEWER_MODULE, "renew", "--runtime-dir", str(runtime_dir)]
    proc = processes.start(command, log_file, cwd=REPO_ROOT)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop_detached(pid_file: Path, timeout: float = 10.0) -> bool:
    """Stop the renewer whose pid is in ``pid_file`` (only if it is one); False when none was running."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    finally:
        pid_file.unlink(missing_ok=True)
    if not is_renewer(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_renewer(pid):
        time.sleep(0.1)
    if is_renewer(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def is_renewer(pid: int) -> bool:
    """True when ``pid`` is a live `seg_handler.launcher renew` process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":  # a zombie child of ours: reap it
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return RENEWER_MODULE.encode() in cmdline and b"renew" in cmdline
