"""Settings of the board server: one frozen dataclass, built from flags and environment in one function.

Every option is declared once in ``OPTIONS`` (flag, environment variable, type, default, help): the parser,
the precedence (a flag wins over its environment variable, which wins over the default) and the defaults all
come from that table. Nothing else in the package reads the environment. OpenTelemetry's own ``OTEL_*``
variables are read by its SDK; ``tracing_enabled`` only records whether they ask for traces.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from board_server.domain.accounts import (
    DEFAULT_PASSWORD_HASHING,
    PASSWORD_HASHINGS,
    TEST_PASSWORD_HASHING,
)
from board_server.runtime.faults import parse_fault
from board_server.tagging.backend import PROTOCOLS, InferenceProtocol
from board_server.tagging.targets import check_token_files, parse_targets
from clients.channels import is_local_target, is_loopback_host

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"
DEFAULT_HTTP_ADDRESS = "127.0.0.1:8088"
# The web app as `make web` builds it in this checkout (served by the HTTP listener when present).
DEFAULT_WEB_ROOT = Path(__file__).resolve().parents[2] / "clients" / "web" / "dist"
DEFAULT_DATABASE_FILE = Path("var") / "board.db"
DEFAULT_AUDIT_LOG = Path("var") / "log" / "board-audit.log"
# The least a tagging lease must exceed the segmentation call timeout by (the store after the call).
LEASE_MARGIN_S = 5.0
# The test-only fault point (runtime/faults.py): read here, once, like every other setting.
TEST_FAULT_ENV = "BOARD_TEST_FAULT"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number of seconds, or with a unit: ``90s``, ``15m``, ``12h``, ``30d``."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30, 90s, 15m, 12h, 30d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"expected on or off, got {text!r}")


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to start; see ``OPTIONS`` for where each value comes from."""

    address: str = DEFAULT_ADDRESS
    database_url: str = ""
    audit_log_path: Path = DEFAULT_AUDIT_LOG
    audit_log_max_bytes: int = 10 * 1024 * 1024
    audit_log_backups: int = 5
    log_level: str = "INFO"
    # Server processes sharing the port (SO_REUSEPORT); 0 in the table below means one per core.
    processes: int = 1
    # The event loop of each server process: uvloop, or the standard library's asyncio loop.
    event_loop: str = "uvloop"
    # PostgreSQL connections of a process's event loop (its calls; SQLite reads run on the loop).
    worker_threads: int = 8
    # The largest request message (an upload's chunks included); larger ones are refused at their first bytes.
    max_message_bytes: int = 1024 * 1024
    grace_seconds: float = 10.0
    sqlite_busy_timeout_ms: int = 30_000
    database_connect_timeout_s: float = 5.0
    # Abuse limits (per process): concurrent calls beyond the cap get RESOURCE_EXHAUSTED at once. The global
    # cap is a memory backstop well above one peer's share: fairness between peers is max_calls_per_peer's.
    max_concurrent_rpcs: int = 2048
    max_calls_per_peer: int = 64
    trusted_proxies: tuple[str, ...] = ()
    request_timeout_s: float = 10.0
    upload_timeout_s: float = 300.0
    client_limits: bool = True  # off only on loopback, to measure what the limits above cost
    max_streams_per_connection: int = 100
    call_timeout_s: float = 30.0
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    min_client_ping_interval_s: float = 10.0
    max_connection_idle_s: float = 300.0
    max_connection_age_s: float = 1800.0
    max_connection_age_grace_s: float = 30.0
    health_check_interval_s: float = 2.0
    # Accounts and transport security.
    auth: bool = True
    sign_up_open: bool = True
    reads_need_sign_in: bool = False
    token_lifetime_s: float = 30 * 86400.0
    password_hashing: str = DEFAULT_PASSWORD_HASHING
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    allow_plaintext: bool = False
    # Limits per client address and per user (0 turns one off).
    sign_in_failures_per_peer: int = 20
    sign_ups_per_peer: int = 10
    writes_per_user_per_minute: int = 600
    user_storage_quota_bytes: int = 1024 * 1024 * 1024
    preview_cache_bytes: int = 1024 * 1024 * 1024
    preview_renders_per_peer: int = 2
    # Attachments and their tagging; an empty target turns tagging off (uploads stay PENDING).
    max_attachment_bytes: int = 20 * 1024 * 1024
    max_attachments_per_post: int = 20
    segmentation_protocol: InferenceProtocol = "torchserve"
    segmentation_target: str = ""
    segmentation_token_files: tuple[Path, ...] = ()
    segmentation_ca_file: Path | None = None
    allow_plaintext_segmentation: bool = False
    segmentation_model: str = "deeplabv3"
    segmentation_timeout_s: float = 60.0
    tagging_workers: int = 2
    tagging_poll_s: float = 2.0
    tagging_backoff_max_s: float = 30.0
    tagging_max_attempts: int = 5
    tagging_lease_s: float = 0.0  # 0: the call timeout plus 30 s
    # Observability.
    metrics_address: str = DEFAULT_METRICS_ADDRESS  # "" turns the exporter off
    tracing_enabled: bool = False
    watch_poll_s: float = 0.5
    # The HTTP listener for browsers (Connect, gRPC-Web, the upload, the web app); "" turns it off.
    http_address: str = DEFAULT_HTTP_ADDRESS
    cors_origins: tuple[str, ...] = ()
    web_root: Path = DEFAULT_WEB_ROOT
    # Safe retries (AIP-155): how long a create's request_id is remembered.
    request_id_ttl_s: float = 24 * 3600.0
    # Tests only: a fault point from BOARD_TEST_FAULT (runtime/faults.py); never a flag, loopback only.
    test_fault: str = ""

    @property
    def tagging_lease_seconds(self) -> float:
        """The lease a claimed attachment is held for: the flag, or the call timeout plus 30 s."""
        return self.tagging_lease_s or self.segmentation_timeout_s + 30

    @property
    def grpc_receive_limit(self) -> int:
        """Largest request message the server reads: ``max_message_bytes`` (uploads come in chunks)."""
        return self.max_message_bytes

    @property
    def grpc_send_limit(self) -> int:
        """Largest answer: an attachment's bytes (GetAttachmentContent) plus 1 MiB of headroom."""
        return max(self.max_message_bytes, self.max_attachment_bytes + 1024 * 1024)

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def http_host(self) -> str:
        return self.http_address.rsplit(":", 1)[0]


@dataclass(frozen=True)
class Option:
    """One setting: its field, flag, environment variable, how to parse it and what the help says."""

    field: str
    flag: str
    env: str
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None


def _path(text: str) -> Path:
    return Path(text)


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _paths(text: str) -> tuple[Path, ...]:
    return tuple(Path(item.strip()) for item in text.split(",") if item.strip())


def _protocol(text: str) -> InferenceProtocol:
    value = text.strip().lower()
    for protocol in PROTOCOLS:
        if value == protocol:
            return protocol
    raise ValueError(f"protocol must be {' or '.join(PROTOCOLS)}, got {text!r}")


def _metrics_address(text: str) -> str:
    return "" if text.strip().lower() in ("", "none", "off") else text.strip()


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())
    for origin in origins:
        if not re.fullmatch(r"https?://[^/\s*]+", origin):
            raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    return origins


def _sign_up(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("open", "closed"):
        raise ValueError(f"sign-up must be open or closed, got {text!r}")
    return value == "open"


def _password_hashing(text: str) -> str:
    value = text.strip().lower()
    if value not in PASSWORD_HASHINGS:
        raise ValueError(f"expected one of {', '.join(PASSWORD_HASHINGS)}, got {text!r}")
    return value


def _networks(text: str) -> tuple[str, ...]:
    """Comma-separated CIDRs or addresses, normalised: ``10.0.0.0/8, ::1`` → ('10.0.0.0/8', '::1/128')."""
    found = []
    for part in text.split(","):
        if part.strip():
            found.append(str(ipaddress.ip_network(part.strip(), strict=False)))
    return tuple(found)


EVENT_LOOPS = ("uvloop", "asyncio")


def _event_loop(text: str) -> str:
    value = text.strip().lower()
    if value not in EVENT_LOOPS:
        raise ValueError(f"event loop must be {' or '.join(EVENT_LOOPS)}, got {text!r}")
    return value


# The databases the board runs on, as SQLAlchemy names them: (backend, driver).
DATABASES = (("sqlite", "pysqlite"), ("postgresql", "psycopg"))


def _database_url(text: str) -> str:
    # Never echoed: a database URL may hold a password.
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise ValueError(
            "not a database URL, e.g. sqlite:///board.db or postgresql+psycopg://user@host:5432/board "
            "(the value is not shown: it may hold a password)"
        ) from None
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if (backend, driver) not in DATABASES:
        raise ValueError(
            f"the board runs on SQLite (sqlite:///PATH) or on PostgreSQL through psycopg "
            f"(postgresql+psycopg://...), not {backend}+{driver}"
        )
    return text


def _read_access(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("anyone", "signed-in"):
        raise ValueError(f"read access must be anyone or signed-in, got {text!r}")
    return value == "signed-in"


# fmt: off
OPTIONS: tuple[Option, ...] = (
    Option("address", "--address", "BOARD_ADDRESS", str, "HOST:PORT to listen on"),
    Option("database_url", "--database-url", "BOARD_DATABASE_URL", _database_url,
           f"SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (default: {DEFAULT_DATABASE_FILE})"),
    Option("audit_log_path", "--audit-log", "BOARD_AUDIT_LOG", _path, "audit log file, rotating"),
    Option("log_level", "--log-level", "BOARD_LOG_LEVEL", str.upper, "DEBUG, INFO, WARNING, ..."),
    Option("processes", "--processes", "BOARD_PROCESSES", int,
           "server processes sharing the port (0: one per core)"),
    Option("event_loop", "--event-loop", "BOARD_EVENT_LOOP", _event_loop,
           "uvloop (default) or asyncio: each server process's event loop"),
    Option("worker_threads", "--workers", "BOARD_WORKERS", int,
           "PostgreSQL connections per process for the calls of its event loop"),
    Option("max_message_bytes", "--max-message-bytes", "BOARD_MAX_MESSAGE_BYTES", int,
           "largest request message in bytes (larger: RESOURCE_EXHAUSTED before it is read)"),
    Option("grace_seconds", "--grace", "BOARD_GRACE_SECONDS", parse_duration,
           "time in-flight calls get on shutdown"),
    Option("max_concurrent_rpcs", "--max-concurrent-rpcs", "BOARD_MAX_CONCURRENT_RPCS", int,
           "calls in progress per process, a memory backstop; more get RESOURCE_EXHAUSTED"),
    Option("max_calls_per_peer", "--max-calls-per-peer", "BOARD_MAX_CALLS_PER_PEER", int,
           "calls and streams in progress per client address, and per signed-in user (per process)"),
    Option("trusted_proxies", "--trusted-proxies", "BOARD_TRUSTED_PROXIES", _networks,
           "CIDRs of proxies whose x-forwarded-for names the client (comma-separated)"),
    Option("request_timeout_s", "--request-timeout", "BOARD_REQUEST_TIMEOUT", parse_duration,
           "a request (an upload: each message) must arrive within this long, or the call is ended"),
    Option("upload_timeout_s", "--upload-timeout", "BOARD_UPLOAD_TIMEOUT", parse_duration,
           "an UploadAttachment must be received and stored within this long"),
    Option("client_limits", "--client-limits", "BOARD_CLIENT_LIMITS", _on_off,
           "off: no calls-per-peer/user cap or request timeout, to measure their cost (loopback only)"),
    Option("max_streams_per_connection", "--max-streams-per-connection",
           "BOARD_MAX_STREAMS_PER_CONNECTION", int, "concurrent calls one connection may open"),
    Option("call_timeout_s", "--call-timeout", "BOARD_CALL_TIMEOUT", parse_duration,
           "server-side deadline of a unary call"),
    Option("keepalive_time_s", "--keepalive-time", "BOARD_KEEPALIVE_TIME", parse_duration,
           "ping a silent client after this long (finds dead peers)"),
    Option("min_client_ping_interval_s", "--min-client-ping-interval", "BOARD_MIN_CLIENT_PING_INTERVAL",
           parse_duration, "clients pinging more often than this are disconnected"),
    Option("max_connection_idle_s", "--max-connection-idle", "BOARD_MAX_CONNECTION_IDLE", parse_duration,
           "close a connection without calls after this long"),
    Option("max_connection_age_s", "--max-connection-age", "BOARD_MAX_CONNECTION_AGE", parse_duration,
           "ask clients to reconnect after this long (spreads load over replicas)"),
    Option("health_check_interval_s", "--health-interval", "BOARD_HEALTH_INTERVAL", parse_duration,
           "how often the database is checked for grpc.health.v1"),
    Option("auth", "--auth", "BOARD_AUTH", _on_off, "on or off (off only on a loopback address)"),
    Option("sign_up_open", "--sign-up", "BOARD_SIGN_UP", _sign_up, "open, or closed: admins create users"),
    Option("reads_need_sign_in", "--read-access", "BOARD_READ_ACCESS", _read_access, "anyone or signed-in"),
    Option("password_hashing", "--password-hashing", "BOARD_PASSWORD_HASHING", _password_hashing,
           "argon2id parameters of new password hashes: rfc9106-low-memory (64 MiB, 3 passes), "
           "rfc9106-high-memory (2 GiB, 1 pass), or cheapest (test suites only, loopback only)"),
    Option("token_lifetime_s", "--token-lifetime", "BOARD_TOKEN_LIFETIME", parse_duration,
           "access token lifetime, e.g. 30d"),
    Option("tls_cert_file", "--tls-cert-file", "BOARD_TLS_CERT_FILE", _optional_path, "PEM certificates"),
    Option("tls_key_file", "--tls-key-file", "BOARD_TLS_KEY_FILE", _optional_path, "PEM private key"),
    Option("allow_plaintext", "--allow-plaintext", "BOARD_ALLOW_PLAINTEXT", _on_off,
           "on: serve without TLS on a non-loopback address with auth on (a TLS proxy in front)"),
    Option("sign_in_failures_per_peer", "--sign-in-failures-per-peer", "BOARD_SIGN_IN_FAILURES_PER_PEER", int,
           "failed sign-ins one client address may make in 15 minutes, over all emails (0: no limit)"),
    Option("sign_ups_per_peer", "--sign-ups-per-peer", "BOARD_SIGN_UPS_PER_PEER", int,
           "sign-ups one client address may make in an hour (0: no limit)"),
    Option("writes_per_user_per_minute", "--writes-per-user-per-minute", "BOARD_WRITES_PER_USER_PER_MINUTE",
           int, "creates, updates and deletes one user may make in a minute (0: no limit)"),
    Option("user_storage_quota_bytes", "--user-storage-quota", "BOARD_USER_STORAGE_QUOTA", int,
           "bytes the attachments of one user's posts may hold (0: no limit)"),
    Option("max_attachment_bytes", "--max-attachment-bytes", "BOARD_MAX_ATTACHMENT_BYTES", int,
           "largest attachment in bytes"),
    Option("max_attachments_per_post", "--max-attachments-per-post", "BOARD_MAX_ATTACHMENTS_PER_POST", int,
           "attachments one post may hold"),
    Option("segmentation_protocol", "--segmentation-protocol", "BOARD_SEGMENTATION_PROTOCOL", _protocol,
           "torchserve (TorchServe's gRPC inference API) or oip (Open Inference Protocol v2 gRPC)"),
    Option("preview_cache_bytes", "--preview-cache-bytes", "BOARD_PREVIEW_CACHE_BYTES", int,
           "bytes all kept previews may hold together; the least recently used go first (0: keep none)"),
    Option("segmentation_target", "--segmentation-target", "BOARD_SEGMENTATION_TARGET", str,
           "HOST:PORT of the model server's gRPC port, several comma-separated, or dns:///NAME:PORT for "
           "every address NAME resolves to; round-robin, a dead server skipped; empty turns tagging off"),
    Option("segmentation_token_files", "--segmentation-token-file", "BOARD_SEGMENTATION_TOKEN_FILE", _paths,
           "file holding the inference key, re-read on every call; one for every target, or a comma list "
           "with one per target in the same order"),
    Option("segmentation_ca_file", "--segmentation-ca-file", "BOARD_SEGMENTATION_CA_FILE", _optional_path,
           "PEM root certificates: TLS to the segmentation target"),
    Option("allow_plaintext_segmentation", "--allow-plaintext-segmentation",
           "BOARD_ALLOW_PLAINTEXT_SEGMENTATION", _on_off,
           "on: plaintext to a non-loopback segmentation target (the inference key crosses the network)"),
    Option("segmentation_model", "--segmentation-model", "BOARD_SEGMENTATION_MODEL", str,
           "model name on the model server"),
    Option("segmentation_timeout_s", "--segmentation-timeout", "BOARD_SEGMENTATION_TIMEOUT", parse_duration,
           "deadline of one segmentation call"),
    Option("tagging_workers", "--tagging-workers", "BOARD_TAGGING_WORKERS", int,
           "concurrent tagging calls (spread over the processes)"),
    Option("tagging_poll_s", "--tagging-poll", "BOARD_TAGGING_POLL_SECONDS", parse_duration,
           "scan for work uploaded through other processes or replicas this often"),
    Option("tagging_lease_s", "--tagging-lease", "BOARD_TAGGING_LEASE_SECONDS", parse_duration,
           "how long a claimed attachment stays leased (0: the segmentation timeout + 30 s)"),
    Option("tagging_max_attempts", "--tagging-max-attempts", "BOARD_TAGGING_MAX_ATTEMPTS", int,
           "attempts at a transient failure (TorchServe 5xx, timeout, dead worker) before FAILED"),
    Option("tagging_backoff_max_s", "--tagging-backoff-max", "BOARD_TAGGING_BACKOFF_MAX_SECONDS",
           parse_duration, "longest wait between retries"),
    Option("metrics_address", "--metrics-address", "BOARD_METRICS_ADDRESS", _metrics_address,
           "HOST:PORT of the Prometheus /metrics endpoint, or none"),
    Option("watch_poll_s", "--watch-poll", "BOARD_WATCH_POLL_SECONDS", parse_duration,
           "how often WatchAttachment looks for changes made by other processes or replicas"),
    Option("http_address", "--http-address", "BOARD_HTTP_ADDRESS", _metrics_address,
           "HOST:PORT of the HTTP listener for browsers (Connect, gRPC-Web, the web app), or none"),
    Option("cors_origins", "--cors-origin", "BOARD_CORS_ORIGIN", _origins,
           "origins (comma-separated) whose pages may call the HTTP listener; none by default"),
    Option("web_root", "--web-root", "BOARD_WEB_ROOT", _path,
           "folder of the built web app the HTTP listener serves (make web builds clients/web/dist)"),
    Option("request_id_ttl_s", "--request-id-ttl", "BOARD_REQUEST_ID_TTL", parse_duration,
           "how long a create's request_id is remembered: a repeat within it returns what the first made"),
)
# fmt: on


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every server flag to ``parser``; each defaults to None so that env and defaults can fill in."""
    defaults = Settings()
    for option in OPTIONS:
        default = getattr(defaults, option.field)
        shown = "one per core" if option.field == "processes" else default
        # An on/off option given alone means on: `--allow-plaintext` as well as `--allow-plaintext on`.
        switch: dict[str, Any] = {"nargs": "?", "const": "on"} if option.parse is _on_off else {}
        parser.add_argument(
            option.flag,
            dest=option.field,
            default=None,
            metavar=option.metavar,
            help=f"{option.help} (env {option.env}; default {shown})",
            **switch,
        )


def _tracing_requested(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "")
    if exporter:
        return exporter.lower() != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def load_settings(
    args: argparse.Namespace | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build Settings: a flag wins over its environment variable, which wins over the default.

    Relative default paths are resolved against ``cwd`` (the working directory). Raises ValueError on a
    malformed or unsafe value (a non-numeric BOARD_WORKERS, an address without a port, auth off on a public
    address, ...), naming the setting.
    """
    env = os.environ if env is None else env
    base = Path.cwd() if cwd is None else cwd
    given = vars(args) if args is not None else {}
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = given.get(option.field)
        source = option.flag
        if raw is None:
            raw, source = env.get(option.env) or None, option.env
        if raw is None:
            continue
        try:
            values[option.field] = option.parse(str(raw))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc
    values.setdefault("database_url", f"sqlite:///{base / DEFAULT_DATABASE_FILE}")
    audit = Path(values.get("audit_log_path", DEFAULT_AUDIT_LOG))
    values["audit_log_path"] = audit if audit.is_absolute() else base / audit
    if values.get("processes", 0) == 0:
        values["processes"] = os.cpu_count() or 1
    values["tracing_enabled"] = _tracing_requested(env)
    values["test_fault"] = env.get(TEST_FAULT_ENV, "")
    known = {f.name for f in fields(Settings)}
    settings = Settings(**{k: v for k, v in values.items() if k in known})
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Raise ValueError naming the first unusable or unsafe setting."""
    s = settings
    if ":" not in s.address:
        raise ValueError(f"address must be HOST:PORT, got {s.address!r}")
    if not isinstance(logging.getLevelName(s.log_level), int):
        raise ValueError(f"unknown log level {s.log_level!r}")
    checks = (
        (s.processes >= 1, "processes must be >= 1"),
        (s.worker_threads >= 1, "workers must be >= 1"),
        (s.max_message_bytes >= 1024, "max message bytes must be >= 1024"),
        (s.grace_seconds >= 0, "grace must be >= 0"),
        (s.max_concurrent_rpcs >= 1, "max concurrent RPCs must be >= 1"),
        (s.max_streams_per_connection >= 1, "max streams per connection must be >= 1"),
        (s.call_timeout_s > 0, "call timeout must be > 0"),
        (s.max_calls_per_peer >= 1, "max calls per peer must be >= 1"),
        (s.request_timeout_s > 0, "request timeout must be > 0"),
        (s.upload_timeout_s > 0, "upload timeout must be > 0"),
        (s.health_check_interval_s > 0, "health interval must be > 0"),
        (s.token_lifetime_s >= 60, "token lifetime must be at least 60 s"),
        (s.max_attachment_bytes >= 1, "max attachment bytes must be >= 1"),
        (s.max_attachments_per_post >= 1, "max attachments per post must be >= 1"),
        (s.segmentation_timeout_s > 0, "segmentation timeout must be > 0"),
        (s.tagging_workers >= 1, "tagging workers must be >= 1"),
        (s.tagging_poll_s > 0, "tagging poll must be > 0"),
        (s.tagging_backoff_max_s > 0, "tagging backoff max must be > 0"),
        (s.tagging_max_attempts >= 1, "tagging max attempts must be >= 1"),
        (s.watch_poll_s > 0, "watch poll must be > 0"),
        (s.sign_in_failures_per_peer >= 0, "sign-in failures per peer must be >= 0"),
        (s.sign_ups_per_peer >= 0, "sign-ups per peer must be >= 0"),
        (s.writes_per_user_per_minute >= 0, "writes per user per minute must be >= 0"),
        (s.user_storage_quota_bytes >= 0, "user storage quota must be >= 0"),
        (s.preview_cache_bytes >= 0, "preview cache bytes must be >= 0"),
        (s.preview_renders_per_peer >= 1, "preview renders per peer must be >= 1"),
        (s.request_id_ttl_s > 0, "request id TTL must be > 0"),
        ((s.tls_cert_file is None) == (s.tls_key_file is None), "give both TLS certificate and key files"),
    )  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    # A lease shorter than a call would let a second replica take work that is still in flight.
    if s.tagging_lease_s and s.tagging_lease_s < s.segmentation_timeout_s + LEASE_MARGIN_S:
        raise ValueError(
            f"tagging lease ({s.tagging_lease_s:g}s) must exceed the segmentation timeout "
            f"({s.segmentation_timeout_s:g}s) by at least {LEASE_MARGIN_S:g}s, so that a call in flight "
            "never outlives its lease"
        )
    _validate_segmentation(s)
    if s.http_address and ":" not in s.http_address:
        raise ValueError(f"http address must be HOST:PORT or none, got {s.http_address!r}")
    for host in (s.host, s.http_host) if s.http_address else (s.host,):
        _validate_listener(s, host)
    if s.test_fault:
        parse_fault(s.test_fault)  # raises ValueError naming what is wrong


def _validate_segmentation(s: Settings) -> None:
    if s.segmentation_target:
        try:
            check_token_files(parse_targets(s.segmentation_target), s.segmentation_token_files)
        except ValueError as exc:
            raise ValueError(f"--segmentation-target: {exc}") from exc
    remote = [t.strip() for t in s.segmentation_target.split(",") if t.strip() and not is_local_target(t)]
    if remote and s.segmentation_ca_file is None and not s.allow_plaintext_segmentation:
        raise ValueError(
            f"refusing to send the inference key in plaintext to {remote[0]!r}: give --segmentation-ca-file "
            "(TLS), or --allow-plaintext-segmentation on a network you trust"
        )


def _validate_listener(s: Settings, host: str) -> None:
    """Raise ValueError for what must never listen on a public ``host`` (gRPC's or HTTP's): auth off, the
    test fault, the client limits off, the cheapest password hashing, and passwords in plaintext (without a
    TLS proxy in front)."""
    if is_loopback_host(host):
        return
    if not s.auth:
        raise ValueError(
            f"--auth off is for local development only: refused on {host!r}; listen on 127.0.0.1 or turn "
            "auth on"
        )
    if s.test_fault:
        raise ValueError(
            f"{TEST_FAULT_ENV} is for tests only: refused on {host!r}; unset it, or listen on 127.0.0.1"
        )
    if s.password_hashing == TEST_PASSWORD_HASHING:
        raise ValueError(
            f"--password-hashing cheapest is for test suites only: refused on {host!r}; listen on 127.0.0.1 "
            "or keep the default"
        )
    if not s.client_limits:
        raise ValueError(
            f"--client-limits off is for measuring their cost only: refused on {host!r}; listen on "
            "127.0.0.1 or keep the limits"
        )
    if not s.tls and not s.allow_plaintext:
        raise ValueError(
            f"refusing to accept passwords and tokens in plaintext on {host!r}: give --tls-cert-file and "
            "--tls-key-file, or --allow-plaintext when a TLS proxy terminates in front of the board"
        )
