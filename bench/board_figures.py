"""The board benchmark's figures: each side's runs summarized, board/floor ratios, and the verdict on each
target (median of the runs, and whether every run met it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.load import Run
from bench.records import summarize

# (operation, concurrency, figure, comparison, limit): the targets, for the SQLite table only.
TARGETS = (
    ("GetPost", 16, "ratio", ">=", 0.60),
    ("CreatePost", 16, "ratio", ">=", 0.35),
    ("CreatePost", 16, "p99_ms", "<=", 30.0),
    ("ListPosts", 16, "ratio", ">=", 0.30),
)
# PostgreSQL's, a local cluster with fsync and synchronous_commit on (no metrics on/off row there).
POSTGRES_TARGETS = (
    ("GetPost", 16, "ratio", ">=", 0.45),
    ("CreatePost", 16, "ratio", ">=", 0.30),
    ("CreatePost", 16, "p99_ms", "<=", 30.0),
    ("ListPosts", 16, "ratio", ">=", 0.35),
)
# The HTTP listener (Connect JSON over HTTP/1.1) against gRPC on the same board: `bench.board --http`.
HTTP_TARGETS = (("GetPost", 16, ">=", 0.40),)
RSS_LIMIT_MB = 150.0
METRICS_COST_LIMIT = 0.05


def side(runs: Sequence[Run]) -> dict[str, Any]:
    figures = {
        "rps": summarize([round(r.rps, 1) for r in runs]),
        "p50_ms": summarize([round(r.p50_ms, 3) for r in runs]),
        "p99_ms": summarize([round(r.p99_ms, 3) for r in runs]),
        "calls": sum(r.calls for r in runs),
        "errors": sum(r.errors for r in runs),
        # Whole run (warm-up included): is the server CPU-bound, and how much of the machine k6 took.
        "server_cores": summarize([round(r.server_cores, 2) for r in runs]),
        "k6_cores": summarize([round(r.k6_cores, 2) for r in runs]),
    }
    # With PostgreSQL's server on this machine and the machine's idle time: where all its cores went.
    for name in ("database_cores", "idle_cores"):
        measured = [round(value, 2) for r in runs if (value := getattr(r, name)) is not None]
        if measured:
            figures[name] = summarize(measured)
    return figures


def ratios(board: Sequence[Run], floor: Sequence[Run]) -> dict[str, Any]:
    """Board rps over the floor's rps of the same round (paired, so that both saw the same moment)."""
    return summarize([round(b.rps / f.rps, 4) if f.rps else 0.0 for b, f in zip(board, floor, strict=True)])


def spread(stat: Mapping[str, Any], digits: int = 2) -> str:
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"


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
    """Each target with the median it is judged on and whether every run met it (PostgreSQL's targets for
    a PostgreSQL table)."""
    postgres = table.get("database") == "postgresql"
    rows = []
    for operation, concurrency, figure, comparison, limit in POSTGRES_TARGETS if postgres else TARGETS:
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
    if postgres:
        return rows
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


def evaluate_http_targets(table: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each Connect/gRPC target with the median it is judged on and whether every run met it."""
    rows = []
    for operation, concurrency, comparison, limit in HTTP_TARGETS:
        name = f"Connect {operation} c{concurrency} / gRPC"
        cell = _cell(table, operation, concurrency)
        if cell is None:
            rows.append({**_verdict(name, None, None, comparison, limit), "note": "not measured"})
            continue
        stat = cell["ratio"]
        worst = stat["min"] if comparison == ">=" else stat["max"]
        row = _verdict(name, round(stat["median"], 3), round(worst, 3), comparison, limit)
        errors = cell["connect"]["errors"] + cell["grpc"]["errors"]
        if errors:
            row.update(met=False, note=f"{errors} failed calls")
        rows.append(row)
    return rows
