"""The cost of request_id (AIP-155) on CreatePost: k6 at concurrency 16 against one board, alternating runs
without and with a fresh request_id in every request (the same build, the same server, the same database).

A request_id costs the server a digest and one INSERT in the create's transaction (a lookup only for a
repeat). Each
round runs both sides, in alternating order (without-with, with-without, ...) so that a drift of the shared
machine's load (or the growing table) favours neither; the cost is 1 - rps(with) / rps(without) of the same
round, its median over the rounds judged against COST_LIMIT. The board runs as bench.board runs it (its
defaults, SQLite at synchronous=FULL, auth on). Results go to bench/results/request-id.json (full runs only),
which bench/report.py renders.

    python -m bench.request_id              # the record: 6 rounds of 5 s per side
    python -m bench.request_id --quick      # a trial: 1 round of 2 s, nothing written
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.board import board_server
from bench.board_figures import side, spread
from bench.load import Load, Run, run_k6
from bench.records import ROOT, load_average, summarize, write_results
from bench.seeding import seed
from bench.servers import BoardFeatures, Server, board_executable

logger = logging.getLogger("bench.request_id")

OPERATION, CONCURRENCY = "CreatePost", 16
COST_LIMIT = 0.10
TARGET = f"request_id cost, {OPERATION} c{CONCURRENCY} (1 - with / without)"
SIDES = ("without", "with")


def measure(load: Load, target: Server, rounds: int) -> dict[str, list[Run]]:
    """``rounds`` rounds of both sides against the board ``target``, in alternating order."""
    runs: dict[str, list[Run]] = {name: [] for name in SIDES}
    for round_ in range(rounds):
        for name in SIDES if round_ % 2 == 0 else SIDES[::-1]:
            env = {"REQUEST_ID": "1"} if name == "with" else {}
            runs[name].append(run_k6(load, target, OPERATION, CONCURRENCY, env=env))
            target.check_alive()
            logger.info("round %d %s request_id: %.0f rps", round_ + 1, name, runs[name][-1].rps)
    return runs


def cpu_per_call_us(runs: Sequence[Run]) -> dict[str, Any]:
    """The server's CPU per successful call in µs (its cores over the whole run, warm-up included, per rps):
    less at the mercy of other load on a shared machine than the rps themselves."""
    return summarize([round(r.server_cores / r.rps * 1e6, 1) if r.rps else 0.0 for r in runs])


def costs(runs: dict[str, list[Run]]) -> dict[str, Any]:
    """1 - with / without per round (paired: both sides of a round saw the same moment)."""
    pairs = zip(runs["with"], runs["without"], strict=True)
    return summarize([round(1 - w.rps / wo.rps, 4) if wo.rps else 0.0 for w, wo in pairs])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s per side; nothing written")
    parser.add_argument("--rounds", type=int, help="rounds of both sides (default 6; a record needs >= 3)")
    parser.add_argument("--seconds", type=float, help="measured seconds per run (default 5, quick 2)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each run (default 1)")
    parser.add_argument("--posts", type=int, default=200, help="posts seeded before measuring")
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, help="board processes (default: cores)"
    )
    parser.add_argument("--board-args", default="", help="extra board-server flags")
    parser.add_argument("--board-server", type=Path, help="board-server executable (default: the venv's)")
    parser.add_argument("--k6", type=Path, default=Path(sys.executable).parent / "k6", help="k6 binary")
    parser.add_argument("--results-dir", type=Path, help="write the JSON here (default bench/results/)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    rounds = args.rounds or (1 if args.quick else 6)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    warmup = 1.0 if args.warmup is None else args.warmup
    if not args.k6.exists():
        raise SystemExit(f"{args.k6} not found: `make install` installs k6 (dev extra)")
    k6_version = subprocess.run([str(args.k6), "version"], capture_output=True, text=True, check=True)
    args.board_server = args.board_server or board_executable()
    features = BoardFeatures.probe(args.board_server)
    record = not args.quick and rounds >= 3
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="board-request-id-") as tmp:
        work = Path(tmp)
        url = f"sqlite:///{work / 'board.db'}"
        with board_server("board", url, work, args, features, metrics=True) as board:
            seeded = seed(board.target, args.posts)
            ids_file = work / "ids.json"
            ids_file.write_text(json.dumps(seeded.post_ids))
            load = Load(args.k6, seconds, warmup, work, ids_file, seeded)
            runs = measure(load, board, rounds)
    cost = costs(runs)
    worst = max(cost["runs"])
    logger.info("request_id cost, %s c%d: %s", OPERATION, CONCURRENCY, spread(cost, 3))
    payload: dict[str, Any] = {
        "setup": {
            "database": "SQLite file, synchronous=FULL (the server's default)",
            "operation": OPERATION,
            "concurrency": CONCURRENCY,
            "rounds": rounds,
            "seconds_per_run": seconds,
            "warmup_seconds": warmup,
            "posts_seeded": args.posts,
            "board_processes": args.processes if features.processes else 1,
            "board_args": args.board_args,
            "auth": bool(seeded.token),
            "quick": args.quick,
            "order": "alternating per round: without-with, with-without, ...",
            "load_generator": f"{k6_version.stdout.strip()} (bench/k6/board.js, REQUEST_ID=1: a fresh UUID4 "
            "per call), one connection per VU, closed loop",
        },
        "without": {**side(runs["without"]), "server_cpu_us_per_call": cpu_per_call_us(runs["without"])},
        "with": {**side(runs["with"]), "server_cpu_us_per_call": cpu_per_call_us(runs["with"])},
        "cost": cost,
        "targets": [
            {
                "target": TARGET,
                "comparison": "<=",
                "limit": COST_LIMIT,
                "value": cost["median"],
                "met": cost["median"] <= COST_LIMIT,
                "met_every_run": worst <= COST_LIMIT,
            }
        ],
    }
    print(json.dumps({"without_rps": payload["without"]["rps"], "with_rps": payload["with"]["rps"]}))
    print(f"{TARGET}: {spread(cost, 3)} (limit {COST_LIMIT:.0%})")
    results_dir = args.results_dir or (ROOT / "bench" / "results" if record else None)
    if results_dir is not None:
        path = write_results(
            "request-id", payload, load_before=load_before, out=results_dir / "request-id.json"
        )
        print(f"written to {path}")
    else:
        print("trial configuration: results not written (a record is >= 3 rounds; --results-dir keeps one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
