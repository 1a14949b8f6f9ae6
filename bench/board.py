"""Board benchmark: real `board-server` processes driven by k6 (Go) against empty gRPC floors, in one run.

The load generator is k6 v1.1.0 (``k6/net/grpc``, the dev extra's ``.venv/bin/k6``), a compiled program whose
cost per call is the same whichever server it drives (and is measured: the k6 CPU column). bench/k6/board.js
loads protos/board/v1/board.proto, opens one connection per virtual user and calls back to back (closed
loop) for a warm-up and then the measured seconds, with ``discardResponseMessage`` so that decoding answers
costs the client nothing.

**The floor** is the fastest thing a Python gRPC server can do with the same calls: an empty unary
``grpc.aio`` server in ONE process, with a generic handler registered for every unary method of
``board.v1.BoardService`` that does no work at all (no request parsing, no response building). It answers
each method with a fixed byte string captured once from the board under test after seeding (a real
``Post`` for GetPost and CreatePost, a real 50-post ``ListPostsResponse`` for ListPosts). Why those bytes
and not the alternatives:

- echoing the request is not an answer k6 can decode for ListPosts (a ListPostsRequest's varint fields read
  as a ListPostsResponse are malformed), and it would send back ~5 bytes where the board sends ~12 KB;
- an empty message is valid, but then the floor never pays for carrying the answer (HTTP/2 framing, copies,
  flow control), so ListPosts' ratio would mostly measure bytes on the wire rather than the board's overhead.

With the board's own answer the floor does the same transport work as the board, and the ratio is what the
board's Python costs on top of it. The floor keeps grpc's default channel arguments and imports nothing of
board_server (a half-edited board cannot break it); the board's own arguments (keepalive, message sizes,
connection age, stream limits) do nothing measurable to one stream per connection over a few seconds.
``--floor-reply empty`` measures against empty messages instead (recorded). One process uses at most one
core (one event loop, one GIL); the board with ``--processes N`` may use N, so on this 2-core machine, where
k6 needs part of a core too, the board can come close to or pass this floor.

For context only, the same empty server also runs in as many SO_REUSEPORT processes as the board does
(``--processes``, default: cores): ratios against both floors are reported; the targets use the one-process
floor. Floor and board runs alternate (floor, reuse-port floor, board, floor, ...) so that background load on
this shared machine weighs on all of them; every cell runs ``--runs`` times (≥ 3 for a record) and reports the
median and min–max of the per-run ratios (board run / the floor run of the same round), with p50/p99 latency
and the CPU cores the server's process tree and k6 used.

The board runs with its defaults (BOARD_* and OTEL_* variables removed from its environment), metrics on a
free loopback port, plus ``--board-args``. Seeding goes through the generated stubs: a user with a password,
SignIn, ``--posts`` posts; the token reaches k6 (env) and every call carries ``authorization: Bearer``. A
server without accounts answers SignIn with UNIMPLEMENTED (or INTERNAL through an old error interceptor): the
calls then carry no token and the results say ``"auth": false``.

Cells: GetPost (random existing id of the seeded posts), CreatePost (SQLite at the server's default
synchronous=FULL), ListPosts (page_size 50), at concurrency 16 and 1; the board's RSS (and PSS) per process
after ``--mixed-seconds`` of mixed load; metrics on vs off (GetPost c16, two fresh boards on the seeded
database, alternating). The same table on PostgreSQL (a throw-away cluster, fsync on) without targets.
Figures go to stdout and, for full runs only, to bench/results/board.json and board-postgres.json
(bench/records.py); ``python -m bench.report`` turns them into docs/benchmarks.md and the README summary.

    python -m bench.board                 # the record (about 15 minutes)
    python -m bench.board --quick         # a trial: 1 short run per cell, nothing written
    python -m bench.board --databases sqlite --operations GetPost --concurrency 16 --board-args="--workers 4"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import glob
import json
import logging
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.postgres import postgres_bin, throwaway_cluster
from bench.records import ROOT, load_average, summarize, write_results
from seg_handler.launcher.processes import free_port

logger = logging.getLogger("bench.board")

K6_SCRIPT = ROOT / "bench" / "k6" / "board.js"
PROTO_DIR = ROOT / "protos"
SERVICE = "board.v1.BoardService"
LISTENING = re.compile(r"listening on (\S+):(\d+)")
OPERATIONS = ("GetPost", "CreatePost", "ListPosts")
CONCURRENCY = (16, 1)
# (operation, concurrency, figure, comparison, limit): the targets, for the SQLite table only.
TARGETS = (
    ("GetPost", 16, "ratio", ">=", 0.60),
    ("CreatePost", 16, "ratio", ">=", 0.35),
    ("CreatePost", 16, "p99_ms", "<=", 30.0),
    ("ListPosts", 16, "ratio", ">=", 0.30),
)
RSS_LIMIT_MB = 150.0
MIX = "70 % GetPost, 20 % ListPosts, 10 % CreatePost"  # as bench/k6/board.js draws them
METRICS_COST_LIMIT = 0.05


# --- processes ---------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A started server process (or several, for the reuse-port floor) and where to reach it."""

    name: str
    target: str
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    def check_alive(self) -> None:
        """Raise RuntimeError with the end of its log when any of its processes has exited."""
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} (pid {proc.pid}) exited with {proc.returncode}:\n{tail}")


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), depth first."""
    parents: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        parents.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _status_kb(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def _role(cmdline: str) -> str:
    if "resource_tracker" in cmdline:
        return "multiprocessing resource tracker"
    return "worker" if "spawn_main" in cmdline or "fork" in cmdline else "child"


def process_tree_rss(pid: int) -> list[dict[str, Any]]:
    """RSS and PSS in MB of ``pid`` and each of its descendants, with their command lines. RSS counts pages
    shared between forked processes in each of them; PSS splits them, so the PSS column sums honestly."""
    rows = []
    for member in [pid, *_children(pid)]:
        proc = Path(f"/proc/{member}")
        try:
            rss, pss = _status_kb(proc / "status", "VmRSS:"), _status_kb(proc / "smaps_rollup", "Pss:")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        rows.append(
            {
                "pid": member,
                "role": _role(cmdline) if member != pid else "main",
                "rss_mb": round(rss / 1024, 1),
                "pss_mb": round(pss / 1024, 1),
                "cmd": cmdline[:120],
            }
        )
    return rows


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, None when it is gone or a zombie: with the pid,
    an identity that a recycled pid does not share (pids wrap every few minutes on a busy machine)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] in "ZX" else fields[19]


def _signal_until_gone(pid: int, started: str | None) -> None:
    """SIGTERM ``pid`` while it is still the process that started at ``started``; SIGKILL it after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if started is None or _start_time(pid) != started:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _start_time(pid) == started:
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process (SIGKILL after 20 s), then whatever it started that outlived it, each by pid and
    start time."""
    descendants = [(pid, _start_time(pid)) for pid in _children(proc.pid)]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid, started in descendants:
        _signal_until_gone(pid, started)


def _start(args: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(args), stdout=log, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True
        )


def _wait_listening(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while not (match := LISTENING.search(log_path.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"{proc.args!r} did not start:\n{log_path.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.05)
    return int(match.group(2))


@contextmanager
def running(
    name: str, args: Sequence[str], work: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Iterator[Server]:
    """Start a server that logs 'listening on HOST:PORT' (log in ``work``, run in ``cwd``, default ``work``);
    yield it; stop it and its children by pid."""
    log = work / f"{name}.log"
    proc = _start(args, log, env or os.environ, cwd or work)
    try:
        port = _wait_listening(proc, log)
        yield Server(name, f"127.0.0.1:{port}", [proc], [log])
    finally:
        _stop(proc)


# --- the floor ---------------------------------------------------------------------------------------------


def unary_methods() -> list[str]:
    from clients.gen.board.v1 import board_pb2

    service = board_pb2.DESCRIPTOR.services_by_name["BoardService"]
    return [m.name for m in service.methods if not (m.client_streaming or m.server_streaming)]


async def _serve_floor(replies: Mapping[str, bytes], port: int, reuseport: bool) -> None:
    def answering(reply: bytes) -> grpc.RpcMethodHandler[bytes, bytes]:
        async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return reply

        return grpc.unary_unary_rpc_method_handler(answer)

    handlers = {name: answering(replies.get(name, b"")) for name in unary_methods()}
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuseport))])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    await server.stop(1)


def serve_floor(replies_file: Path, port: int, reuseport: bool) -> None:
    """Run the empty floor server until SIGTERM (the ``--serve-floor`` mode of this module)."""
    replies = {k: base64.b64decode(v) for k, v in json.loads(replies_file.read_text()).items()}
    asyncio.run(_serve_floor(replies, port, reuseport))


@contextmanager
def floor_servers(name: str, replies_file: Path, processes: int, work: Path, tag: str) -> Iterator[Server]:
    """The empty aio floor: one process (SO_REUSEPORT off), or ``processes`` sharing one port."""
    base = [sys.executable, "-m", "bench.board", "--serve-floor", str(replies_file)]
    reuse = ["--reuseport"] if processes > 1 else []
    with ExitStack() as stack:
        # In the repository root: `bench` is importable from there only (it is not an installed package).
        first = stack.enter_context(
            running(f"{name}-{tag}-0", [*base, "--port", "0", *reuse], work, cwd=ROOT)
        )
        port = first.target.rsplit(":", 1)[1]
        for i in range(1, processes):
            more = stack.enter_context(
                running(f"{name}-{tag}-{i}", [*base, "--port", port, *reuse], work, cwd=ROOT)
            )
            first.procs += more.procs
            first.logs += more.logs
        first.name = name
        yield first


# --- the board ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoardFeatures:
    """What the installed board-server offers (read from --help: the bench runs against old and new)."""

    processes: bool
    metrics: bool

    @classmethod
    def probe(cls, executable: Path) -> BoardFeatures:
        """Raise SystemExit with its output when board-server cannot even print its help."""
        done = subprocess.run([str(executable), "--help"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"`board-server --help` failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return cls(processes="--processes" in done.stdout, metrics="--metrics-address" in done.stdout)


def board_executable() -> Path:
    """The virtualenv's `board-server` entry point (beside this Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "board-server"
    found = beside if beside.exists() else shutil.which("board-server")
    if not found:
        raise SystemExit("board-server not found: run `make install`")
    return Path(found)


def clean_env() -> dict[str, str]:
    """This environment without BOARD_* and OTEL_* variables: the board runs with its defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("BOARD_", "OTEL_"))}


@dataclass(frozen=True)
class Seed:
    """What the load needs: the author, the seeded post ids and the access token ("" without accounts)."""

    user_id: int
    post_ids: list[int]
    token: str
    sign_in: str  # "OK", or the status SignIn answered on a server without accounts

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


# What a server without accounts answers to SignIn: UNIMPLEMENTED, or INTERNAL where its error interceptor
# maps the generated base servicer's NotImplementedError. Safe to accept: a server WITH accounts would then
# refuse the token-less CreatePost calls of the seeding, and the bench would stop there.
_NO_ACCOUNTS = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL)


def seed(target: str, posts: int) -> Seed:
    """Create a user with a password, sign in (no token on a server without accounts) and create ``posts``
    posts through the generated stubs; raise grpc.RpcError when any of that fails otherwise."""
    from clients.gen.board.v1 import board_pb2, board_pb2_grpc

    email, password = f"bench-{secrets.token_hex(6)}@example.org", f"bench-{secrets.token_hex(12)}"
    with grpc.insecure_channel(target) as channel:
        stub = board_pb2_grpc.BoardServiceStub(channel)  # type: ignore[no-untyped-call]
        user = stub.CreateUser(board_pb2.CreateUserRequest(name="Bench", email=email, password=password))
        try:
            signed = stub.SignIn(board_pb2.SignInRequest(email=email, password=password), timeout=30)
            token, sign_in = signed.access_token, "OK"
        except grpc.RpcError as exc:
            if not isinstance(exc, grpc.Call) or exc.code() not in _NO_ACCOUNTS:
                raise
            token, sign_in = "", f"{exc.code().name} ({exc.details()})"
        metadata = (("authorization", f"Bearer {token}"),) if token else ()

        def create(i: int) -> int:
            request = board_pb2.CreatePostRequest(user_id=user.id, title=f"post {i}", content="y" * 200)
            post_id: int = stub.CreatePost(request, metadata=metadata, timeout=60).id
            return post_id

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(create, range(posts)))
    return Seed(user.id, ids, token, sign_in)


def capture_replies(target: str, seeded: Seed) -> dict[str, bytes]:
    """The board's serialized answers, one per measured operation: what the floor sends back."""
    from clients.gen.board.v1 import board_pb2

    requests = {
        "GetPost": board_pb2.GetPostRequest(id=seeded.post_ids[len(seeded.post_ids) // 2]),
        "CreatePost": board_pb2.CreatePostRequest(user_id=seeded.user_id, title="bench", content="x" * 200),
        "ListPosts": board_pb2.ListPostsRequest(page_size=50),
    }
    replies = {}
    with grpc.insecure_channel(target) as channel:
        for name, request in requests.items():
            call = channel.unary_unary(f"/{SERVICE}/{name}", type(request).SerializeToString, None)
            reply = call(request, metadata=seeded.metadata, timeout=30)
            replies[name] = reply if isinstance(reply, bytes) else b""
    return replies


@contextmanager
def board_server(
    name: str,
    database_url: str,
    work: Path,
    args: argparse.Namespace,
    features: BoardFeatures,
    *,
    metrics: bool,
) -> Iterator[Server]:
    """The board on ``database_url`` with its defaults, plus --processes / --metrics-address when it has
    them (metrics on a free loopback port, or ``none``)."""
    cmd = [
        str(args.board_server), "--address", "127.0.0.1:0", "--database-url", database_url,
        "--audit-log", str(work / f"{name}-audit.log"), "--grace", "2",
    ]  # fmt: skip
    if features.processes:
        cmd += ["--processes", str(args.processes)]
    if features.metrics:
        cmd += ["--metrics-address", f"127.0.0.1:{free_port()}" if metrics else "none"]
    cmd += shlex.split(args.board_args)
    with running(name, cmd, work, clean_env()) as server:
        yield server


# --- load (k6) ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """How every k6 run is made."""

    k6: Path
    seconds: float
    warmup: float
    work: Path
    ids_file: Path
    seeded: Seed


@dataclass(frozen=True)
class Run:
    """One k6 run against one server: successful calls per second and latency of the measured phase, and
    the CPU the server (its process tree) and k6 used over the whole run, in cores."""

    rps: float
    p50_ms: float
    p99_ms: float
    calls: int
    errors: int
    server_cores: float
    k6_cores: float


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (processes that are gone count nothing)."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def run_k6(load: Load, server: Server, operation: str, concurrency: int) -> Run:
    """Run bench/k6/board.js once against ``server``; raise RuntimeError with k6's output when it fails."""
    target = server.target
    summary = load.work / "k6-summary.json"
    summary.unlink(missing_ok=True)
    env = {
        **os.environ,
        "K6_NO_USAGE_REPORT": "true",
        "TARGET": target,
        "PROTO_DIR": str(PROTO_DIR),
        "OPERATION": operation,
        "VUS": str(concurrency),
        "SECONDS": str(load.seconds),
        "WARMUP": str(load.warmup),
        "IDS_FILE": str(load.ids_file),
        "USER_ID": str(load.seeded.user_id),
        "TOKEN": load.seeded.token,
        "SUMMARY": str(summary),
    }
    cmd = [str(load.k6), "run", "--quiet", "--no-color", "--no-usage-report", "--address", "", str(K6_SCRIPT)]
    pids = [p for proc in server.procs for p in (proc.pid, *_children(proc.pid))]
    server_cpu, k6_cpu, started = (
        _cpu_seconds(pids),
        resource.getrusage(resource.RUSAGE_CHILDREN),
        time.monotonic(),
    )
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=load.warmup + load.seconds + 120, check=False
    )
    wall = time.monotonic() - started
    server_cores = (_cpu_seconds(pids) - server_cpu) / wall
    k6_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    k6_cores = (k6_after.ru_utime + k6_after.ru_stime - k6_cpu.ru_utime - k6_cpu.ru_stime) / wall
    if done.returncode != 0 or not summary.exists():
        raise RuntimeError(
            f"k6 failed ({done.returncode}) against {target}:\n{(done.stdout + done.stderr)[-3000:]}"
        )
    metrics = json.loads(summary.read_text())["metrics"]
    calls = int(metrics.get("calls{phase:measure}", {}).get("values", {}).get("count", 0))
    errors = int(metrics.get("failed_calls{phase:measure}", {}).get("values", {}).get("count", 0))
    latency = metrics.get("grpc_req_duration{phase:measure}", {}).get("values", {})
    if errors:
        logger.warning(
            "%s %s c%d: %d of %d calls failed: %s",
            target,
            operation,
            concurrency,
            errors,
            calls,
            done.stderr.strip()[-500:],
        )
    ok_rps = (calls - errors) / load.seconds
    p50, p99 = latency.get("p(50)", 0.0), latency.get("p(99)", 0.0)
    return Run(ok_rps, p50, p99, calls, errors, server_cores, k6_cores)


def _side(runs: Sequence[Run]) -> dict[str, Any]:
    return {
        "rps": summarize([round(r.rps, 1) for r in runs]),
        "p50_ms": summarize([round(r.p50_ms, 3) for r in runs]),
        "p99_ms": summarize([round(r.p99_ms, 3) for r in runs]),
        "calls": sum(r.calls for r in runs),
        "errors": sum(r.errors for r in runs),
        # Whole run (warm-up included): is the server CPU-bound, and how much of the machine k6 took.
        "server_cores": summarize([round(r.server_cores, 2) for r in runs]),
        "k6_cores": summarize([round(r.k6_cores, 2) for r in runs]),
    }


def _ratios(board: Sequence[Run], floor: Sequence[Run]) -> dict[str, Any]:
    """Board rps over the floor's rps of the same round (paired, so that both saw the same moment)."""
    return summarize([round(b.rps / f.rps, 4) if f.rps else 0.0 for b, f in zip(board, floor, strict=True)])


def measure_cell(
    load: Load, operation: str, concurrency: int, servers: Sequence[Server], runs: int
) -> dict[str, Any]:
    """Run each server in turn, ``runs`` rounds (floor, [reuse-port floor,] board, floor, ...)."""
    got: dict[str, list[Run]] = {s.name: [] for s in servers}
    for _ in range(runs):
        for server in servers:
            got[server.name].append(run_k6(load, server, operation, concurrency))
            server.check_alive()
    cell: dict[str, Any] = {"operation": operation, "concurrency": concurrency}
    for name, side in got.items():
        cell[name] = _side(side)
    # "ratio" is against the one-process floor (the targets'); "ratio_reuseport" for context.
    cell["ratio"] = _ratios(got["board"], got["floor"])
    if "floor_reuseport" in got:
        cell["ratio_reuseport"] = _ratios(got["board"], got["floor_reuseport"])
    logger.info("%s c%d: board/floor %s", operation, concurrency, _fmt(cell["ratio"]))
    return cell


def _fmt(stat: Mapping[str, Any], digits: int = 2) -> str:
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"


# --- one table: a database, its floors, its cells ----------------------------------------------------------


def measure_database(
    kind: str, database_url: str, args: argparse.Namespace, features: BoardFeatures, work: Path
) -> dict[str, Any]:
    """Seed the board on ``database_url``, then every cell, the RSS after mixed load and (SQLite) metrics."""
    board_processes = args.processes if features.processes else 1
    notes: list[str] = []
    if not features.processes:
        notes.append(
            f"board-server has no --processes flag yet: the board ran as 1 process, not {args.processes}"
        )
    with board_server(f"board-{kind}", database_url, work, args, features, metrics=True) as board:
        rss_idle = process_tree_rss(board.pid)
        started = time.monotonic()
        seeded = seed(board.target, args.posts)
        logger.info(
            "%s: %d posts seeded in %.1f s (auth: %s)",
            kind,
            args.posts,
            time.monotonic() - started,
            bool(seeded.token),
        )
        if not seeded.token:
            notes.append(f"SignIn answered {seeded.sign_in}: a server without accounts, calls carry no token")
        replies = capture_replies(board.target, seeded)
        if args.floor_reply == "empty":
            replies = dict.fromkeys(replies, b"")
        replies_file = work / f"replies-{kind}.json"
        replies_file.write_text(json.dumps({k: base64.b64encode(v).decode() for k, v in replies.items()}))
        ids_file = work / f"ids-{kind}.json"
        ids_file.write_text(json.dumps(seeded.post_ids))
        load = Load(args.k6, args.seconds, args.warmup, work, ids_file, seeded)
        with ExitStack() as stack:
            servers = [stack.enter_context(floor_servers("floor", replies_file, 1, work, kind))]
            if board_processes > 1:
                reuseport = floor_servers("floor_reuseport", replies_file, board_processes, work, kind)
                servers.append(stack.enter_context(reuseport))
            else:
                notes.append("the board runs 1 process: the reuse-port floor would equal the floor, not run")
            servers.append(Server("board", board.target, board.procs, board.logs))
            cells = [
                measure_cell(load, op, c, servers, args.runs)
                for c in args.concurrency
                for op in args.operations
            ]
        logger.info("%s: %.0f s of mixed load at c16 before reading RSS", kind, args.mixed_seconds)
        mixed = run_k6(Load(args.k6, args.mixed_seconds, 0.0, work, ids_file, seeded), board, "mixed", 16)
        board.check_alive()
        rss = process_tree_rss(board.pid)
    metrics = measure_metrics(database_url, args, features, load) if kind == "sqlite" else None
    return {
        "database": kind,
        "setup": {
            "database": "SQLite file, synchronous=FULL (the server's default)"
            if kind == "sqlite"
            else "PostgreSQL throw-away cluster, fsync and synchronous_commit on (defaults)",
            "posts_seeded": args.posts,
            "seconds_per_run": args.seconds,
            "warmup_seconds": args.warmup,
            "runs": args.runs,
            "quick": args.quick,
            "processes_requested": args.processes,
            "board_processes": board_processes,
            "board_args": args.board_args,
            "floor": "empty grpc.aio server, 1 process; targets are against this floor",
            "floor_reply": "the board's own serialized answer per method"
            if args.floor_reply == "board"
            else "empty messages",
            "reply_bytes": {k: len(v) for k, v in replies.items()},
            "load_generator": f"{args.k6_version} (bench/k6/board.js), one connection per VU, closed loop",
            "flags": {"processes": features.processes, "metrics_address": features.metrics},
        },
        "auth": bool(seeded.token),
        "cells": cells,
        "rss": {
            "after": f"{args.mixed_seconds:.0f} s of mixed load at c16 ({MIX})",
            "mixed_rps": round(mixed.rps, 1),
            "mixed_server_cores": round(mixed.server_cores, 2),
            "mixed_errors": mixed.errors,
            "idle_processes": rss_idle,
            "processes": rss,
            "sum_mb": round(sum(p["rss_mb"] for p in rss), 1),
            "sum_pss_mb": round(sum(p["pss_mb"] for p in rss), 1),
            "max_mb": max((p["rss_mb"] for p in rss), default=0.0),
        },
        "metrics": metrics,
        "notes": notes,
    }


METRICS_ROUNDS = 5


def measure_metrics(
    database_url: str, args: argparse.Namespace, features: BoardFeatures, load: Load
) -> dict[str, Any]:
    """GetPost c16 on two fresh boards on the same (seeded) database, one with metrics on a loopback port,
    one with ``--metrics-address none``; cost = 1 - on / off per round.

    The true cost is about 1 % (5 us of a call's 470 us of CPU, in-process) and a round's noise on this
    shared machine about 5 %: so at least 5 rounds, each pair in alternating order (on-off, off-on, ...), so
    that a drift of the machine's load favours neither side."""
    if not features.metrics:
        note = "board-server has no --metrics-address flag yet: metrics on vs off not run"
        logger.warning(note)
        return {"status": "not run", "note": note}
    with (
        board_server("board-metrics-on", database_url, load.work, args, features, metrics=True) as on,
        board_server("board-metrics-off", database_url, load.work, args, features, metrics=False) as off,
    ):
        runs: dict[str, list[Run]] = {"on": [], "off": []}
        rounds = args.runs if args.quick else max(METRICS_ROUNDS, args.runs)
        for round_ in range(rounds):
            pair = (("on", on), ("off", off))
            for name, server in pair if round_ % 2 == 0 else pair[::-1]:
                runs[name].append(run_k6(load, server, "GetPost", 16))
                server.check_alive()
    pairs = zip(runs["on"], runs["off"], strict=True)
    cost = summarize([round(1 - on.rps / off.rps, 4) if off.rps else 0.0 for on, off in pairs])
    logger.info("metrics cost, GetPost c16: %s", _fmt(cost, 3))
    return {
        "status": "run",
        "operation": "GetPost",
        "concurrency": 16,
        "on": _side(runs["on"]),
        "off": _side(runs["off"]),
        "cost": cost,
    }


# --- PostgreSQL ---------------------------------------------------------------------------------------------


@contextmanager
def postgres_cluster() -> Iterator[str | None]:
    """A fresh cluster on a free loopback port with its default durability (fsync on); yield a SQLAlchemy
    URL of an empty database, or None when no PostgreSQL binaries are installed. Stopped and removed after."""
    with throwaway_cluster("board-bench-pg-", durable=True, max_connections=300) as cluster:
        if cluster is None:
            yield None
            return
        url = cluster.create_database("board_bench")
        logger.info("throw-away PostgreSQL cluster in %s, port %d", cluster.base, cluster.port)
        yield url


# --- targets, table ----------------------------------------------------------------------------------------


def _cell(table: Mapping[str, Any], operation: str, concurrency: int) -> dict[str, Any] | None:
    for cell in table["cells"]:
        if cell["operation"] == operation and cell["concurrency"] == concurrency:
            found: dict[str, Any] = cell
            return found
    return None


def _verdict(
    name: str, value: float | None, worst: float | None, comparison: str, limit: float
) -> dict[str, Any]:
    def meets(v: float | None) -> bool | None:
        if v is None:
            return None
        return v >= limit if comparison == ">=" else v <= limit

    return {
        "target": name,
        "comparison": comparison,
        "limit": limit,
        "value": value,
        "met": meets(value),
        "met_every_run": meets(worst),
    }


def evaluate_targets(table: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the median it is judged on and whether every run met it."""
    rows = []
    for operation, concurrency, figure, comparison, limit in TARGETS:
        label = "board/floor" if figure == "ratio" else figure.replace("_ms", " ms")
        name = f"{operation} c{concurrency} {label}"
        cell = _cell(table, operation, concurrency)
        if cell is None:
            rows.append({**_verdict(name, None, None, comparison, limit), "note": "not measured"})
            continue
        stat = cell["ratio"] if figure == "ratio" else cell["board"][figure]
        worst = stat["min"] if comparison == ">=" else stat["max"]
        row = _verdict(name, round(stat["median"], 3), round(worst, 3), comparison, limit)
        if cell["board"]["errors"]:
            # A figure with failed calls in it measures something else than the target asks.
            row.update(met=False, note=f"{cell['board']['errors']} failed calls")
        rows.append(row)
    rss = table["rss"]
    rows.append(_verdict("board RSS per process (MB)", rss["max_mb"], rss["max_mb"], "<=", RSS_LIMIT_MB))
    metrics = table.get("metrics") or {"status": "not run", "note": "not measured"}
    if metrics["status"] == "run":
        cost = metrics["cost"]
        value, worst = round(cost["median"], 4), round(cost["max"], 4)
        rows.append(_verdict("metrics cost (GetPost c16)", value, worst, "<=", METRICS_COST_LIMIT))
    else:
        rows.append(
            {
                **_verdict("metrics cost (GetPost c16)", None, None, "<=", METRICS_COST_LIMIT),
                "note": metrics["note"],
            }
        )
    return rows


def _met(flag: bool | None) -> str:
    return {True: "met", False: "NOT MET", None: "not run"}[flag]


def print_table(table: Mapping[str, Any]) -> None:
    setup = table["setup"]
    print(
        f"\n== {setup['database']}; board {setup['board_processes']} process(es); auth: {table['auth']}; "
        f"{setup['runs']} × {setup['seconds_per_run']:g} s per cell =="
    )
    reuse = setup["board_processes"] > 1
    header = (
        f"{'operation':<11}{'c':>3}{'floor rps':>11}{'board rps':>11}  {'board/floor':<19}"
        + (f"{'/reuse-port floor':<19}" if reuse else "")
        + f"{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}  cores: floor/board/k6"
    )
    print(header)
    print("-" * len(header))
    for cell in table["cells"]:
        print(
            f"{cell['operation']:<11}{cell['concurrency']:>3}{cell['floor']['rps']['median']:>11.0f}"
            f"{cell['board']['rps']['median']:>11.0f}  {_fmt(cell['ratio']):<19}"
            + (f"{_fmt(cell['ratio_reuseport']):<19}" if reuse else "")
            + f"{cell['board']['p50_ms']['median']:>8.2f}{cell['board']['p99_ms']['median']:>8.2f}"
            f"{cell['board']['errors']:>8}  {cell['floor']['server_cores']['median']:.2f}/"
            f"{cell['board']['server_cores']['median']:.2f}/{cell['board']['k6_cores']['median']:.2f}"
        )
    rss = table["rss"]
    each = ", ".join(f"{p['rss_mb']:.0f} ({p['role']})" for p in rss["processes"])
    print(f"RSS after {rss['after']}: {each} MB (sum {rss['sum_mb']:.0f} MB); {rss['mixed_rps']:.0f} rps")
    metrics = table.get("metrics")
    if metrics and metrics["status"] == "run":
        print(f"metrics on vs off, GetPost c16: cost {_fmt(metrics['cost'], 3)}")
    for note in table["notes"]:
        print(f"  note: {note}")


def print_targets(targets: Sequence[Mapping[str, Any]]) -> None:
    """The issue's targets (SQLite, against the one-process floor), each met or not, on the median."""
    if not targets:
        return
    print("\nTargets (SQLite; ratios against the one-process aio floor; median of the runs):")
    for row in targets:
        value = "—" if row["value"] is None else f"{row['value']:g}"
        verdict = _met(row["met"])
        if row["met"] and row["met_every_run"] is False:
            verdict += " (not in every run)"
        note = f"  ({row['note']})" if row.get("note") else ""
        print(f"  {row['target']:<34} {row['comparison']} {row['limit']:<6g} {value:>9}  {verdict}{note}")


# --- entry point -------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a trial: 1 run of 2 s per cell, 5 s mixed, 200 posts; nothing written without --results-dir",
    )
    parser.add_argument("--seconds", type=float, help="measured seconds per run (default 5, quick 2)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each run (default 1, quick 0.5)")
    parser.add_argument(
        "--runs", type=int, help="runs per cell, each interleaved with the floors (default 3)"
    )
    parser.add_argument("--mixed-seconds", type=float, help="mixed load before reading RSS (default 60)")
    parser.add_argument("--posts", type=int, help="posts seeded before measuring (default 1000, quick 200)")
    parser.add_argument("--operations", nargs="+", choices=OPERATIONS, default=list(OPERATIONS))
    parser.add_argument("--concurrency", nargs="+", type=int, default=list(CONCURRENCY))
    parser.add_argument(
        "--databases",
        nargs="+",
        choices=("sqlite", "postgresql"),
        default=["sqlite", "postgresql"],
        help="tables to measure (default both; PostgreSQL skipped with a note when absent)",
    )
    parser.add_argument(
        "--database-url", help="measure this database instead (sqlite:/// or postgresql+psycopg://)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="board processes (its --processes) and reuse-port floor processes (default: cores)",
    )
    parser.add_argument(
        "--board-args", default="", help="extra board-server flags, e.g. --board-args='--workers 4'"
    )
    parser.add_argument(
        "--floor-reply",
        choices=("board", "empty"),
        default="board",
        help="what the floor answers: the board's own bytes (default) or empty messages",
    )
    parser.add_argument("--board-server", type=Path, help="board-server executable (default: the venv's)")
    parser.add_argument("--k6", type=Path, default=Path(sys.executable).parent / "k6", help="k6 binary")
    parser.add_argument(
        "--results-dir", type=Path, help="write the JSON here (default bench/results/, full runs)"
    )
    parser.add_argument("--serve-floor", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--reuseport", action="store_true", help=argparse.SUPPRESS)
    return parser


def _apply_defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    for name, full, trial in (
        ("seconds", 5.0, 2.0),
        ("warmup", 1.0, 0.5),
        ("runs", 3, 1),
        ("mixed_seconds", 60.0, 5.0),
        ("posts", 1000, 200),
    ):
        if getattr(args, name) is None:
            setattr(args, name, trial if quick else full)


def _is_record(args: argparse.Namespace) -> bool:
    """Only a full configuration replaces the committed records."""
    return (
        not args.quick
        and args.runs >= 3
        and args.mixed_seconds >= 60
        and set(args.operations) == set(OPERATIONS)
        and set(args.concurrency) == set(CONCURRENCY)
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.serve_floor:
        serve_floor(args.serve_floor, args.port, args.reuseport)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    _apply_defaults(args)
    if not args.k6.exists():
        raise SystemExit(f"{args.k6} not found: `make install` installs k6 (dev extra)")
    version = subprocess.run([str(args.k6), "version"], capture_output=True, text=True, check=True)
    args.k6_version = version.stdout.strip()
    args.board_server = args.board_server or board_executable()
    features = BoardFeatures.probe(args.board_server)
    kinds = args.databases
    if args.database_url:
        kinds = ["sqlite" if args.database_url.startswith("sqlite") else "postgresql"]
    skipped = []
    if "postgresql" in kinds and not args.database_url and postgres_bin() is None:
        skipped.append("PostgreSQL table not run: no initdb found (apt-get install postgresql)")
        kinds = [k for k in kinds if k != "postgresql"]
        print(f"\n== {skipped[-1]} ==")
    results_dir = args.results_dir or (ROOT / "bench" / "results" if _is_record(args) else None)
    targets: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="board-bench-") as tmp:
        for kind in kinds:
            load_before = load_average()
            work = Path(tmp) / kind
            work.mkdir()
            with ExitStack() as stack:
                url = args.database_url
                if url is None:
                    sqlite = f"sqlite:///{work / 'board.db'}"
                    url = sqlite if kind == "sqlite" else stack.enter_context(postgres_cluster())
                assert url is not None  # postgres_cluster yields None only without initdb, checked above
                try:
                    table = measure_database(kind, url, args, features, work)
                except (RuntimeError, grpc.RpcError):
                    kept = Path(tempfile.mkdtemp(prefix="board-bench-logs-"))
                    for log in work.glob("*.log"):
                        shutil.copy(log, kept)
                    logger.error("%s table failed; server logs kept in %s", kind, kept)
                    raise
            table["notes"] += skipped if kind == "sqlite" else []
            table["targets"] = evaluate_targets(table) if kind == "sqlite" else []
            targets += table["targets"]
            print_table(table)
            print(f"load average before → after: {load_before} → {load_average()}")
            if results_dir is not None:
                name = "board" if kind == "sqlite" else "board-postgres"
                path = write_results(name, table, load_before=load_before, out=results_dir / f"{name}.json")
                print(f"written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print_targets(targets)
    if results_dir is None:
        print("\ntrial configuration: results not written (a record is a full run; --results-dir keeps one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
