"""Board benchmark: real `board-server` processes driven by k6 against an empty gRPC floor in the same run.

Every cell (GetPost, CreatePost, ListPosts at concurrency 16 and 1) alternates floor and board runs and
reports the median and spread of board/floor; then the RSS per process after mixed load, metrics on vs off,
and the per-client limits on vs off (``--client-limits off``). Every table records the limits its board ran
with. Why this floor, this load generator and these cells: docs/operations.md, "How this was chosen". Results
go to bench/results/board.json and board-postgres.json (full runs only), which bench/report.py renders.

    python -m bench.board                 # the record (about 15 minutes)
    python -m bench.board --quick         # a trial: 1 short run per cell, nothing written
    python -m bench.board --databases sqlite --operations GetPost --concurrency 16 --board-args="--workers 4"
    python -m bench.board --only limits   # the limits comparison alone: bench/results/board-limits.json
    python -m bench.board --http          # Connect on the HTTP listener against gRPC, same board (SQLite)

With ``--http`` it measures GetPost and CreatePost c16 as Connect POSTs (binary, as the web app sends them)
over HTTP/1.1 to the board's HTTP listener (the browsers' way in) against the same calls over gRPC,
alternating, on the same board; results go to bench/results/board-connect.json (full runs only).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench.board_figures import evaluate_http_targets, evaluate_targets, ratios, side, spread
from bench.board_tables import print_http_table, print_table, print_targets
from bench.floor import capture_replies, floor_servers, write_replies
from bench.load import Load, Run, run_k6, run_k6_side_by_side
from bench.postgres import benchmark_database, local_server_pid, postgres_bin
from bench.procfs import process_tree_rss
from bench.records import ROOT, load_average, summarize, write_results
from bench.seeding import seed
from bench.servers import (
    BoardFeatures,
    Server,
    board_executable,
    clean_env,
    http_listener,
    limit_flags,
    limits_record,
    running,
)
from seg_handler.launcher.processes import free_port

logger = logging.getLogger("bench.board")

OPERATIONS = ("GetPost", "CreatePost", "ListPosts")
CONCURRENCY = (16, 1)
MIX = "70 % GetPost, 20 % ListPosts, 10 % CreatePost"  # as bench/k6/board.js draws them


@contextmanager
def board_server(
    name: str,
    database_url: str,
    work: Path,
    args: argparse.Namespace,
    features: BoardFeatures,
    *,
    metrics: bool,
    http: bool = False,
    extra: Sequence[str] = (),
) -> Iterator[Server]:
    """The board on ``database_url`` with its defaults, plus --processes / --metrics-address when it has
    them (metrics on a free loopback port, or ``none``), its HTTP listener on a free port when ``http`` (else
    off), then ``extra`` flags and --board-args."""
    cmd = [
        str(args.board_server), "--address", "127.0.0.1:0", "--database-url", database_url,
        "--audit-log", str(work / f"{name}-audit.log"), "--grace", "2",
    ]  # fmt: skip
    if features.processes:
        cmd += ["--processes", str(args.processes)]
    if features.metrics:
        cmd += ["--metrics-address", f"127.0.0.1:{free_port()}" if metrics else "none"]
    cmd += limit_flags(features)
    if features.http:
        cmd += ["--http-address", "127.0.0.1:0" if http else "none"]
    cmd += [*extra, *shlex.split(args.board_args)]  # last: they win
    with running(name, cmd, work, clean_env()) as server:
        yield server


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
    for name, runs_of_one in got.items():
        cell[name] = side(runs_of_one)
    # "ratio" is against the one-process floor (the targets'); "ratio_reuseport" for context.
    cell["ratio"] = ratios(got["board"], got["floor"])
    if "floor_reuseport" in got:
        cell["ratio_reuseport"] = ratios(got["board"], got["floor_reuseport"])
    logger.info("%s c%d: board/floor %s", operation, concurrency, spread(cell["ratio"]))
    return cell


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
        replies_file = write_replies(work / f"replies-{kind}.json", replies)
        ids_file = work / f"ids-{kind}.json"
        ids_file.write_text(json.dumps(seeded.post_ids))
        database_pid = local_server_pid(database_url) if kind == "postgresql" else None
        load = Load(args.k6, args.seconds, args.warmup, work, ids_file, seeded, database_pid)
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
    limits = measure_limits(database_url, args, features, load) if kind == "sqlite" else None
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
            "floor": "empty grpc.aio server on uvloop, 1 process; targets are against this floor",
            "floor_reply": "the board's own serialized answer per method"
            if args.floor_reply == "board"
            else "empty messages",
            "reply_bytes": {k: len(v) for k, v in replies.items()},
            "load_generator": f"{args.k6_version} (bench/k6/board.js), one connection per VU, closed loop",
            "flags": {"processes": features.processes, "metrics_address": features.metrics},
            "limits": limits_record(features, shlex.split(args.board_args)),
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
        "limits": limits,
        "notes": notes,
    }


METRICS_ROUNDS = 5


def measure_metrics(
    database_url: str, args: argparse.Namespace, features: BoardFeatures, load: Load
) -> dict[str, Any]:
    """GetPost c16 on two fresh boards on the same (seeded) database, one with metrics on a loopback port,
    one with ``--metrics-address none``; at least METRICS_ROUNDS rounds (the cost is small against a round's
    noise) of ``on_off_cost``."""
    if not features.metrics:
        note = "board-server has no --metrics-address flag yet: metrics on vs off not run"
        logger.warning(note)
        return {"status": "not run", "note": note}
    with (
        board_server("board-metrics-on", database_url, load.work, args, features, metrics=True) as on,
        board_server("board-metrics-off", database_url, load.work, args, features, metrics=False) as off,
    ):
        rounds = args.runs if args.quick else max(METRICS_ROUNDS, args.runs)
        return on_off_cost("metrics", load, on, off, rounds)


def on_off_cost(what: str, load: Load, on: Server, off: Server, rounds: int) -> dict[str, Any]:
    """GetPost c16 on ``on`` and ``off`` side by side, ``rounds`` times: one k6 each, started together and
    measured over the same seconds (the one started first alternates); cost = 1 - on / off per round.

    Both servers run on one core and both k6s on another (the two swapped every other round), so that the
    servers share one core's time and speed: this shared machine's cores differ in speed from minute to
    minute, and with the servers free to move, rounds ranged over ±30 % and a median of 20 rounds could
    say 1 % where the cost was 7.5 %. Pinned, an A/A comparison of one server with itself gives -0.1 %
    (rounds within ±0.5 %)."""
    runs: dict[str, list[Run]] = {"on": [], "off": []}
    cpus = sorted(os.sched_getaffinity(0))
    for round_ in range(rounds):
        pair = (("on", on), ("off", off)) if round_ % 2 == 0 else (("off", off), ("on", on))
        swap = round_ // 2 % 2
        cores = (cpus[swap], cpus[1 - swap]) if len(cpus) >= 2 else None
        measured = run_k6_side_by_side(load, [server for _, server in pair], "GetPost", 16, cores=cores)
        for (name, server), run in zip(pair, measured, strict=True):
            runs[name].append(run)
            server.check_alive()
    pairs = zip(runs["on"], runs["off"], strict=True)
    cost = summarize([round(1 - on.rps / off.rps, 4) if off.rps else 0.0 for on, off in pairs])
    logger.info("%s cost, GetPost c16: %s", what, spread(cost, 3))
    return {
        "status": "run",
        "operation": "GetPost",
        "concurrency": 16,
        "method": "side by side: one k6 per server at the same time, the first started alternating; both "
        "servers pinned to one core and both k6s to the other, the cores swapped every other round",
        "on": side(runs["on"]),
        "off": side(runs["off"]),
        "cost": cost,
    }


HTTP_OPERATIONS = ("GetPost", "CreatePost")


def measure_http(
    database_url: str, args: argparse.Namespace, features: BoardFeatures, work: Path
) -> dict[str, Any]:
    """GetPost and CreatePost c16 over Connect (the HTTP listener) and over gRPC, on one seeded board, each
    round in alternating order so that a drift of the machine's load favours neither."""
    if not features.http:
        raise SystemExit("board-server has no --http-address: nothing to measure over Connect")
    board_processes = args.processes if features.processes else 1
    with board_server("board-http", database_url, work, args, features, metrics=True, http=True) as board:
        connect = http_listener(board)
        seeded = seed(board.target, args.posts)
        ids_file = work / "ids-http.json"
        ids_file.write_text(json.dumps(seeded.post_ids))
        load = Load(args.k6, args.seconds, args.warmup, work, ids_file, seeded)
        cells = []
        for operation in HTTP_OPERATIONS:
            got: dict[str, list[Run]] = {"grpc": [], "connect": []}
            for round_ in range(args.runs):
                pair = (("grpc", board), ("connect", connect))
                for name, server in pair if round_ % 2 == 0 else pair[::-1]:
                    got[name].append(run_k6(load, server, operation, 16))
                    board.check_alive()
            ratio = ratios(got["connect"], got["grpc"])
            cell = {
                "operation": operation,
                "concurrency": 16,
                "grpc": side(got["grpc"]),
                "connect": side(got["connect"]),
                "ratio": ratio,
            }
            logger.info("%s c16: Connect/gRPC %s", operation, spread(ratio))
            cells.append(cell)
    return {
        "database": "sqlite",
        "setup": {
            **_sqlite_setup(args),
            "runs": args.runs,
            "quick": args.quick,
            "board_processes": board_processes,
            "board_args": args.board_args,
            "connect": "Connect unary, binary (application/proto) as the web app sends it, HTTP/1.1 POSTs "
            "with keep-alive (k6/http), one connection per VU",
            "grpc": "gRPC over HTTP/2 (k6/net/grpc), one connection per VU",
            "load_generator": f"{args.k6_version} (bench/k6/board.js), closed loop",
        },
        "auth": bool(seeded.token),
        "cells": cells,
        "notes": [],
    }


def main_http(args: argparse.Namespace, features: BoardFeatures) -> int:
    """``--http``: the Connect/gRPC table, written to board-connect.json for a full run."""
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="board-bench-http-") as tmp:
        work = Path(tmp)
        table = measure_http(args.database_url or f"sqlite:///{work / 'board.db'}", args, features, work)
    table["targets"] = evaluate_http_targets(table)
    print_http_table(table)
    print(f"load average before → after: {load_before} → {load_average()}")
    print_targets(table["targets"], "Targets (Connect against gRPC on the same board; median of the runs):")
    results_dir = args.results_dir or (
        ROOT / "bench" / "results" if not args.quick and args.runs >= 3 else None
    )
    if results_dir is None:
        print("\ntrial configuration: results not written (a record is 3 runs or more, not --quick)")
        return 0
    path = write_results(
        "board-connect", table, load_before=load_before, out=results_dir / "board-connect.json"
    )
    print(f"written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


LIMITS_ROUNDS = 5


def measure_limits(
    database_url: str, args: argparse.Namespace, features: BoardFeatures, load: Load
) -> dict[str, Any]:
    """GetPost c16 on two fresh boards on the same (seeded) database, one with every per-client limit on (the
    defaults), one with ``--client-limits off`` (gRPC reads a unary request before the board's code runs and
    nothing is counted, as before the limits); cost = 1 - on / off per round, at least LIMITS_ROUNDS rounds,
    side by side (``on_off_cost``). The k6 load is 16 connections from one address and one user: under the
    default caps, so nothing is refused. Each board runs ONE process: with two, the kernel's SO_REUSEPORT
    split of the 16 connections between them differs per server and per run, and moved the cost of a round
    by ±20 %, far beyond the few per cent measured."""
    if not features.client_limits:
        note = "board-server has no --client-limits flag yet: limits on vs off not run"
        logger.warning(note)
        return {"status": "not run", "note": note}
    one_process = argparse.Namespace(**{**vars(args), "processes": 1})
    with (
        board_server("board-limits-on", database_url, load.work, one_process, features, metrics=True) as on,
        board_server(
            "board-limits-off", database_url, load.work, one_process, features, metrics=True,
            extra=("--client-limits", "off"),
        ) as off,
    ):  # fmt: skip
        rounds = args.runs if args.quick else max(LIMITS_ROUNDS, args.limits_rounds or args.runs)
        compared = on_off_cost("limits", load, on, off, rounds)
    met = compared["cost"]["median"] <= LIMITS_MAX_COST
    limits = limits_record(features, shlex.split(args.board_args))
    return {**compared, "board_processes": 1, "max_cost": LIMITS_MAX_COST, "met": met, "limits_on": limits}


LIMITS_MAX_COST = 0.03  # the hardening issue: the limits cost at most 3 % of GetPost c16


def limits_target(limits: dict[str, Any]) -> dict[str, Any]:
    """The limits' cost (median over the rounds) against LIMITS_MAX_COST, as bench/report.py reads targets."""
    if limits.get("status") != "run":
        return {}
    cost = limits["cost"]["median"]
    return {
        "limits cost, GetPost c16 (1 - on/off)": {"value": cost, "max": LIMITS_MAX_COST, "met": limits["met"]}
    }


def _sqlite_setup(args: argparse.Namespace) -> dict[str, Any]:
    """What every SQLite-only record of this bench says of its setup first."""
    return {
        "database": "SQLite file, synchronous=FULL (the server's default)",
        "posts_seeded": args.posts,
        "seconds_per_run": args.seconds,
        "warmup_seconds": args.warmup,
    }


def measure_limits_alone(args: argparse.Namespace, features: BoardFeatures, work: Path) -> dict[str, Any]:
    """``--only limits``: seed a SQLite board, then ``measure_limits`` alone (no floors, no other cells)."""
    database_url = f"sqlite:///{work / 'board.db'}"
    with board_server("board-seed", database_url, work, args, features, metrics=False) as board:
        seeded = seed(board.target, args.posts)
    ids_file = work / "ids.json"
    ids_file.write_text(json.dumps(seeded.post_ids))
    load = Load(args.k6, args.seconds, args.warmup, work, ids_file, seeded)
    limits = measure_limits(database_url, args, features, load)
    return {
        "database": "sqlite",
        "setup": {
            **_sqlite_setup(args),
            "board_processes": 1,
            "board_args": args.board_args,
            "load_generator": f"{args.k6_version} (bench/k6/board.js), one connection per VU, closed loop, "
            "one k6 per board at the same time",
            "limits": limits_record(features, shlex.split(args.board_args)),
        },
        "auth": bool(seeded.token),
        "limits": limits,
        "targets": limits_target(limits),
    }


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
    parser.add_argument(
        "--http",
        action="store_true",
        help="only Connect on the HTTP listener against gRPC (GetPost, CreatePost c16) on the same board",
    )
    parser.add_argument("--board-server", type=Path, help="board-server executable (default: the venv's)")
    parser.add_argument(
        "--only",
        choices=("limits",),
        help="measure one comparison alone: limits (on vs off, GetPost c16) into board-limits.json",
    )
    parser.add_argument(
        "--limits-rounds", type=int, help=f"rounds of the limits comparison (at least {LIMITS_ROUNDS})"
    )
    parser.add_argument("--k6", type=Path, default=Path(sys.executable).parent / "k6", help="k6 binary")
    parser.add_argument(
        "--results-dir", type=Path, help="write the JSON here (default bench/results/, full runs)"
    )
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    _apply_defaults(args)
    if not args.k6.exists():
        raise SystemExit(f"{args.k6} not found: `make install` installs k6 (dev extra)")
    version = subprocess.run([str(args.k6), "version"], capture_output=True, text=True, check=True)
    args.k6_version = version.stdout.strip()
    args.board_server = args.board_server or board_executable()
    features = BoardFeatures.probe(args.board_server)
    if args.only == "limits":
        return _limits_only(args, features)
    if args.http:
        return main_http(args, features)
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
                    url = sqlite if kind == "sqlite" else stack.enter_context(benchmark_database())
                assert url is not None  # benchmark_database yields None only without initdb, checked above
                try:
                    table = measure_database(kind, url, args, features, work)
                except (RuntimeError, grpc.RpcError):
                    kept = Path(tempfile.mkdtemp(prefix="board-bench-logs-"))
                    for log in work.glob("*.log"):
                        shutil.copy(log, kept)
                    logger.error("%s table failed; server logs kept in %s", kind, kept)
                    raise
            table["notes"] += skipped if kind == "sqlite" else []
            table["targets"] = evaluate_targets(table)
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


def _limits_only(args: argparse.Namespace, features: BoardFeatures) -> int:
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="board-bench-limits-") as tmp:
        table = measure_limits_alone(args, features, Path(tmp))
    limits = table["limits"]
    if limits["status"] == "run":
        cost = limits["cost"]
        print(
            f"limits cost, GetPost c16: median {100 * cost['median']:.2f} % "
            f"(min {100 * cost['min']:.2f} %, max {100 * cost['max']:.2f} %, {len(cost['runs'])} rounds); "
            f"target <= {100 * LIMITS_MAX_COST:.0f} %: {'met' if limits['met'] else 'NOT met'}"
        )
    out = (args.results_dir or ROOT / "bench" / "results") / "board-limits.json"
    if args.quick and args.results_dir is None:
        print("trial configuration: results not written")
        return 0
    path = write_results("board-limits", table, load_before=load_before, out=out)
    print(f"written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
