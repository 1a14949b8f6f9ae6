"""Render docs/benchmarks.md and README.md's benchmark summary from the committed bench/results/*.json.

Tables are generated, never typed: every figure comes from a results file, and every table (and every row of
the README summary) names that file, its date, the git sha it was measured at and the load average during
the run. The board's files (board.json, board-postgres.json) have their own renderer; every other file
(serving.json, e2e.json, ...) is rendered generically from whatever keys it has, so that a bench can change
its figures without breaking the report.

    python -m bench.report            # rewrite docs/benchmarks.md and the README section
    python -m bench.report --check    # exit 1 when either is not what the results say (CI, tests)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.records import RESULTS_DIR, ROOT

DOC = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
START, END = "<!-- bench:board:start -->", "<!-- bench:board:end -->"
# Known benches first, in this order; any other results file follows, alphabetically.
ORDER = ("board", "board-postgres", "board-connect", "request-id", "serving", "e2e")
MAX_GENERIC_ROWS = 80

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Result:
    """One results file: its bench name, where it is and what it holds."""

    name: str
    path: Path
    record: Record

    @property
    def file(self) -> str:
        try:
            return str(self.path.relative_to(ROOT))
        except ValueError:
            return str(self.path)


def load_results(directory: Path = RESULTS_DIR) -> list[Result]:
    """Every readable ``*.json`` in ``directory`` (known benches first); unreadable files are skipped."""
    found = {}
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            found[path.stem] = Result(path.stem, path, record)
    known = [found.pop(name) for name in ORDER if name in found]
    return known + [found[name] for name in sorted(found)]


# --- provenance: file, date, sha, load ---------------------------------------------------------------------


def _dig(record: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(record, Mapping) or key not in record:
            return None
        record = record[key]
    return record


def run_date(record: Record) -> str:
    """When the results were written: ``YYYY-MM-DD HH:MM UTC``, else the raw text or "date not recorded"."""
    raw = record.get("finished") or record.get("time") or record.get("date")
    if not isinstance(raw, str):
        return "date not recorded"
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return raw
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment.utcoffset() is not None else raw


def git_sha(record: Record) -> str:
    sha = _dig(record, "machine", "git_sha") or record.get("git_sha")
    if not isinstance(sha, str) or not sha:
        return "sha not recorded"
    dirty = _dig(record, "machine", "git_dirty")
    return f"{sha[:7]}{' (uncommitted changes)' if dirty else ''}"


def load_text(record: Record) -> str:
    """The 1-minute load average before → after the run, from whichever shape the file records it in."""
    load = record.get("load_average")
    pair: list[Any] | None = None
    if isinstance(load, Mapping):
        before, after = load.get("before"), load.get("after")
        first = [v[0] if isinstance(v, list) and v else v for v in (before, after)]
        pair = first
    for path in (("setup", "loadavg_1m_before_after"), ("loadavg_1m_before_after",), ("load_average_1m",)):
        if pair is None and isinstance(found := _dig(record, *path), list):
            pair = found
    if not pair or not all(isinstance(v, int | float) for v in pair):
        return "load not recorded"
    return "load " + " → ".join(f"{v:.2f}" for v in pair)


LOAD_LEGEND = "load = 1-minute load average before → after the run"


def provenance(result: Result) -> str:
    """`file`, date, git sha, load average, and the machine's cores when recorded."""
    parts = [
        f"`{result.file}`",
        run_date(result.record),
        f"git {git_sha(result.record)}",
        load_text(result.record),
    ]
    cores = _dig(result.record, "machine", "cores")
    if cores:
        parts.append(f"{cores} cores")
    if _dig(result.record, "setup", "quick"):
        parts.append("**quick trial, not a record**")
    return " · ".join(parts)


def short_provenance(result: Result) -> str:
    """``board.json, 2026-11-30, 0fab339, load 0.41 → 1.20`` (what is not recorded says so)."""
    record = result.record
    date = run_date(record)
    sha = git_sha(record)
    return ", ".join(
        [result.path.name, date[:10] if date[:1].isdigit() else date, sha[:7] if "not" not in sha else sha,
         load_text(record)]
    )  # fmt: skip


# --- markdown helpers --------------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def number(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def spread(stat: Any, digits: int = 2) -> str:
    """``median (min–max)`` of a bench.records.summarize() dict; a plain number as itself."""
    if isinstance(stat, Mapping) and "median" in stat:
        if stat.get("min") == stat.get("max"):
            return number(stat["median"], digits)
        return (
            f"{number(stat['median'], digits)} ({number(stat['min'], digits)}–{number(stat['max'], digits)})"
        )
    return number(stat, digits)


def median(stat: Any) -> Any:
    return stat.get("median") if isinstance(stat, Mapping) else stat


def verdict(met: Any, every_run: Any = None) -> str:
    if met is None:
        return "not run"
    if not met:
        return "**not met**"
    return "met" if every_run is not False else "met (median; not every run)"


# --- the board ---------------------------------------------------------------------------------------------


COMPARISONS = {">=": "≥", "<=": "≤"}


def board_targets(record: Record) -> list[list[str]]:
    """[target, limit, median, verdict] for each target bench.board judged."""
    rows = []
    for target in record.get("targets") or []:
        value, limit = target.get("value"), target.get("limit")
        as_percent = "cost" in str(target.get("target"))
        if not isinstance(value, int | float):
            shown = "—"
        else:
            shown = f"{value * 100:.1f} %" if as_percent else f"{value:.3g}"
        limit_text = f"{limit * 100:g} %" if as_percent else f"{limit:g}"
        comparison = target.get("comparison", "")
        note = f" ({target['note']})" if target.get("note") else ""
        rows.append(
            [
                str(target.get("target")),
                f"{COMPARISONS.get(comparison, comparison)} {limit_text}",
                shown,
                verdict(target.get("met"), target.get("met_every_run")) + note,
            ]
        )
    return rows


def render_board(result: Result) -> list[str]:
    record = result.record
    setup = record.get("setup") or {}
    cells = record.get("cells") or []
    reuse = any("ratio_reuseport" in cell for cell in cells)
    lines = [
        f"{setup.get('database', record.get('database', ''))}; board processes: "
        f"{setup.get('board_processes', '?')}; signed in (auth): {record.get('auth')}; "
        f"{setup.get('runs', '?')} run(s) × {setup.get('seconds_per_run', '?')} s per cell after "
        f"{setup.get('warmup_seconds', '?')} s warm-up; {setup.get('posts_seeded', '?')} seeded posts; "
        f"load generator {setup.get('load_generator', '?')}.",
        "",
        f"Floor: {setup.get('floor', '?')}. It answers with {setup.get('floor_reply', '?')} "
        f"({', '.join(f'{k} {v:,} B' for k, v in (setup.get('reply_bytes') or {}).items())}). "
        "Ratios are per round (board run / the floor run just before it): median (min–max). CPU cores: what "
        "the server's processes and k6 used over a run (warm-up included), median; on PostgreSQL also its "
        "server's processes (database), and the cores the machine left idle during the board's runs.",
        "",
    ]
    header = ["operation", "c", "floor rps", "board rps", "board / floor"]
    header += ["board / reuse-port floor"] if reuse else []
    database = any("database_cores" in (cell.get("board") or {}) for cell in cells)
    header += ["board p50 ms", "board p99 ms", "errors"]
    header += [f"CPU cores: floor / board / k6{' / database' if database else ''} (idle)"]
    rows = []
    for cell in cells:
        board, floor = cell.get("board") or {}, cell.get("floor") or {}
        row = [
            str(cell.get("operation")),
            str(cell.get("concurrency")),
            number(median(_dig(floor, "rps"))),
            number(median(_dig(board, "rps"))),
            spread(cell.get("ratio")),
        ]
        row += [spread(cell.get("ratio_reuseport"))] if reuse else []
        row += [spread(board.get("p50_ms")), spread(board.get("p99_ms")), number(board.get("errors"))]
        cores = [median(side.get("server_cores")) for side in (floor, board)] + [
            median(board.get("k6_cores"))
        ]
        cores += [median(board.get("database_cores"))] if database else []
        idle = f" ({number(median(board['idle_cores']))})" if "idle_cores" in board else ""
        row += [" / ".join(number(c) for c in cores) + idle]
        rows.append(row)
    lines += table(header, rows)
    rss = record.get("rss")
    if isinstance(rss, Mapping):
        each = ", ".join(
            f"{p.get('rss_mb')} MB" + (f" ({p['role']})" if p.get("role") else "")
            for p in rss.get("processes") or []
        )
        lines += [
            "",
            f"Board RSS per process after {rss.get('after')}: {each} (sum {rss.get('sum_mb')} MB, "
            f"PSS sum {rss.get('sum_pss_mb', '—')} MB); the mixed load ran at "
            f"{number(rss.get('mixed_rps'))} rps with {rss.get('mixed_errors', 0)} errors.",
        ]
    metrics = record.get("metrics")
    if isinstance(metrics, Mapping) and metrics.get("status") == "run":
        cost = metrics.get("cost") or {}
        lines += [
            "",
            f"Metrics on vs off ({metrics.get('operation')} c{metrics.get('concurrency')}): "
            f"{number(median(_dig(metrics, 'on', 'rps')))} vs "
            f"{number(median(_dig(metrics, 'off', 'rps')))} rps; cost {_percent(cost)}.",
        ]
    elif isinstance(metrics, Mapping):
        lines += ["", f"Metrics on vs off: {metrics.get('status')} ({metrics.get('note', '')})."]
    limits = record.get("limits")
    if isinstance(limits, Mapping) and limits.get("status") == "run":
        lines += [
            "",
            f"Per-client limits on vs off ({limits.get('operation')} c{limits.get('concurrency')}): "
            f"{number(median(_dig(limits, 'on', 'rps')))} vs "
            f"{number(median(_dig(limits, 'off', 'rps')))} rps; cost {_percent(limits.get('cost') or {})}.",
        ]
    lines += targets_lines(record)
    notes = record.get("notes") or []
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return lines


def render_request_id(result: Result) -> list[str]:
    """bench.request_id: CreatePost c16 without and with a request_id, the paired cost and its verdict."""
    record = result.record
    setup = record.get("setup") or {}
    lines = [
        f"{setup.get('database', '?')}; board processes: {setup.get('board_processes', '?')}; signed in "
        f"(auth): {setup.get('auth')}; {setup.get('rounds', '?')} round(s) × "
        f"{setup.get('seconds_per_run', '?')} s per side after {setup.get('warmup_seconds', '?')} s warm-up, "
        f"{setup.get('order', '')}; load generator {setup.get('load_generator', '?')}.",
        "",
        "The same build and the same server: only the requests differ. Cost per round: 1 - rps with / rps "
        "without (the two runs of that round); median (min–max).",
        "",
    ]
    rows = []
    for name in ("without", "with"):
        figures = record.get(name) or {}
        rows.append(
            [
                f"{setup.get('operation', '?')} c{setup.get('concurrency', '?')}, {name} request_id",
                spread(figures.get("rps")),
                spread(figures.get("p50_ms")),
                spread(figures.get("p99_ms")),
                number(figures.get("errors")),
                number(median(figures.get("server_cores"))),
                spread(figures.get("server_cpu_us_per_call"), 0),
            ]
        )
    header = ["requests", "rps", "p50 ms", "p99 ms", "errors", "server CPU cores", "server CPU µs per call"]
    lines += table(header, rows)
    cost = record.get("cost")
    lines += ["", f"Cost of a request_id: {_percent(cost) if isinstance(cost, Mapping) else '—'}."]
    return lines + targets_lines(record)


def render_connect(result: Result) -> list[str]:
    """The HTTP listener (Connect) against gRPC on the same board (``bench.board --http``)."""
    record = result.record
    setup = record.get("setup") or {}
    lines = [
        f"{setup.get('database', '')}; board processes: {setup.get('board_processes', '?')}; signed in "
        f"(auth): {record.get('auth')}; {setup.get('runs', '?')} run(s) × "
        f"{setup.get('seconds_per_run', '?')} s per side after {setup.get('warmup_seconds', '?')} s "
        "warm-up, the two sides alternating; "
        f"{setup.get('posts_seeded', '?')} seeded posts; load generator {setup.get('load_generator', '?')}.",
        "",
        f"Connect: {setup.get('connect', '?')}. gRPC: {setup.get('grpc', '?')}. Ratios are per round "
        "(the Connect run / the gRPC run beside it): median (min–max).",
        "",
    ]
    header = [
        "operation",
        "c",
        "gRPC rps",
        "Connect rps",
        "Connect / gRPC",
        "Connect p50 ms",
        "Connect p99 ms",
    ]
    header += ["gRPC p99 ms", "errors"]
    rows = []
    for cell in record.get("cells") or []:
        grpc, connect = cell.get("grpc") or {}, cell.get("connect") or {}
        errors = (grpc.get("errors") or 0) + (connect.get("errors") or 0)
        rows.append(
            [
                str(cell.get("operation")),
                str(cell.get("concurrency")),
                number(median(_dig(grpc, "rps"))),
                number(median(_dig(connect, "rps"))),
                spread(cell.get("ratio")),
                spread(connect.get("p50_ms")),
                spread(connect.get("p99_ms")),
                spread(grpc.get("p99_ms")),
                number(errors),
            ]
        )
    lines += table(header, rows)
    return lines + targets_lines(record)


def targets_lines(record: Mapping[str, Any]) -> list[str]:
    """The table of a record's judged targets (none: no lines)."""
    targets = board_targets(record)
    return ["", *table(["target", "limit", "median", "verdict"], targets)] if targets else []


def _percent(stat: Mapping[str, Any]) -> str:
    if "median" not in stat:
        return "—"
    if stat.get("min") == stat.get("max"):
        return f"{stat['median'] * 100:.1f} %"
    return f"{stat['median'] * 100:.1f} % ({stat['min'] * 100:.1f} to {stat['max'] * 100:.1f} %)"


# --- any other bench: generic, tolerant --------------------------------------------------------------------

_SKIP = {"machine", "bench", "finished", "load_average", "benchmark", "time"}


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, scalar) pairs of a JSON value; a list of numbers becomes its summary."""
    if isinstance(value, Mapping):
        if "median" in value and "min" in value:
            yield path, spread(value, 3)
            return
        for key, inner in value.items():
            yield from _leaves(inner, f"{path} / {key}" if path else str(key))
    elif isinstance(value, list):
        if value and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            yield path, ", ".join(number(v, 3) for v in value[:8]) + (" …" if len(value) > 8 else "")
        else:
            for i, inner in enumerate(value):
                yield from _leaves(inner, f"{path} [{i}]")
    else:
        yield path, value


@dataclass(frozen=True)
class GenericTarget:
    """One target of a generic results file: its name, limit ("≤ 1.1", or "" when the name says it), the
    value measured ("" for a bare flag) and whether it was met (None: not judged)."""

    name: str
    limit: str
    value: str
    met: bool | None


def _generic_target(name: str, entry: Any) -> GenericTarget | None:
    if isinstance(entry, bool):  # {"x_met": true}
        return GenericTarget(name, "", "", entry)
    if not isinstance(entry, Mapping):  # a bare limit such as {"ratio_c1_max": 1.1}: no verdict
        return None
    met = entry.get("met")
    limit = ""
    if entry.get("max") is not None:
        limit = f"≤ {number(entry['max'], 3)}"
    elif entry.get("min") is not None:
        limit = f"≥ {number(entry['min'], 3)}"
    value = entry.get("value")
    return GenericTarget(
        name, limit, "" if value is None else number(value, 3), met if isinstance(met, bool) else None
    )


def generic_targets(record: Record) -> list[GenericTarget]:
    """Targets of a generic results file: ``targets`` as a mapping (name → ``{value, max|min, met}`` or a
    ``*_met`` flag) or as a list of ``{target, value, met}`` rows."""
    targets = record.get("targets")
    found: list[GenericTarget | None] = []
    if isinstance(targets, Mapping):
        found = [_generic_target(str(name), entry) for name, entry in targets.items()]
    elif isinstance(targets, list):
        found = [
            _generic_target(str(row.get("target") or row.get("name")), row)
            for row in targets
            if isinstance(row, Mapping)
        ]
    return [target for target in found if target is not None]


def render_generic(result: Result) -> list[str]:
    record = result.record
    lines: list[str] = []
    targets = generic_targets(record)
    if targets:
        rows = [[t.name, t.limit, t.value, verdict(t.met)] for t in targets]
        lines += [*table(["target", "limit", "measured", "verdict"], rows), ""]
    figures = [
        (path, value)
        for key, inner in record.items()
        if key not in _SKIP and key != "targets"
        for path, value in _leaves(inner, key)
    ]
    rows = [[path, value if isinstance(value, str) else number(value, 3)] for path, value in figures]
    lines += table(["figure", "value"], rows[:MAX_GENERIC_ROWS])
    if len(rows) > MAX_GENERIC_ROWS:
        lines += ["", f"({len(rows) - MAX_GENERIC_ROWS} more figures in the file.)"]
    return lines


RENDERERS: dict[str, Callable[[Result], list[str]]] = {
    "board": render_board,
    "board-postgres": render_board,
    "board-connect": render_connect,
    "request-id": render_request_id,
}
TITLES = {
    "board": "Board (gRPC, SQLite) against the empty aio floor — `python -m bench.board`",
    "board-postgres": "Board on PostgreSQL against the empty aio floor — `python -m bench.board`",
    "board-connect": "Board over Connect (the HTTP listener) against gRPC — `python -m bench.board --http`",
    "request-id": "The cost of request_id on CreatePost — `python -m bench.request_id`",
    "serving": "Serving, TorchServe and the OIP server — `python -m bench.serving`",
    "e2e": "Photos end to end: AddAttachment → TAGGED — `python -m bench.e2e`",
    "board-limits": "Per-client limits on vs off, GetPost c16 — `python -m bench.board --only limits`",
    "watch": "Watch latency across replicas on PostgreSQL (LISTEN/NOTIFY) — `python -m bench.watch`",
}


# --- summary, document, README section ---------------------------------------------------------------------


def is_sweep(result: Result) -> bool:
    """A parameter sweep (``serving-sweep.json``): its runs chose a setting and its page stays, but its
    targets are not the verdict on the code (the bench's own file is)."""
    return result.name.endswith("-sweep")


def target_tally(results: Sequence[Result]) -> str:
    """``board 3 of 6 targets met (…not met…); serving 2 of 3 …`` over every file with targets."""
    parts = []
    for result in results:
        if is_sweep(result):
            continue
        if result.name in RENDERERS:
            flags = [(str(t.get("target")), t.get("met")) for t in result.record.get("targets") or []]
        else:
            flags = [(t.name, t.met) for t in generic_targets(result.record)]
        judged = [(name, met) for name, met in flags if met is not None]
        if not judged:
            continue
        missed = [name for name, met in judged if not met]
        text = f"{result.name}: {sum(1 for _, met in judged if met)} of {len(judged)} targets met"
        parts.append(text + (f" (not met: {', '.join(missed)})" if missed else ""))
    return "; ".join(parts) if parts else "no targets recorded yet"


def render_document(results: Sequence[Result]) -> str:
    when = "; ".join(short_provenance(r) for r in results)
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python -m bench.report` (run by `make bench`) from {len(results)} results file(s) in "
        f"`bench/results/`: {when or 'none yet — run `make bench`'}.",
        f"Targets: {target_tally(results)}.",
        "",
        "Do not edit this page by hand: rerun `make bench` (or `python -m bench.report` after a single "
        "bench). Each bench measures its floor in the same run, on the same machine, and goals are ratios to "
        "it; the machine is shared, so every table says the load average during its run "
        f"({LOAD_LEGEND}).",
    ]
    for result in results:
        render = RENDERERS.get(result.name, render_generic)
        lines += [
            "",
            f"## {TITLES.get(result.name, result.name)}",
            "",
            provenance(result),
            "",
            *render(result),
        ]
    return "\n".join(lines) + "\n"


def render_summary(results: Sequence[Result]) -> str:
    """The README section: every target's verdict with its source; the full tables live in the docs page."""
    rows: list[list[str]] = []
    for result in results:
        if is_sweep(result):
            continue
        source = short_provenance(result)
        if result.name == "board-postgres" and result.record.get("targets"):
            rows += [[f"{row[0]} (PostgreSQL)", *row[1:], source] for row in board_targets(result.record)]
            continue
        if result.name == "board-postgres":  # recorded before PostgreSQL had targets
            for cell in result.record.get("cells") or []:
                if cell.get("concurrency") == 16:
                    name = f"{cell.get('operation')} c16 board/floor (PostgreSQL)"
                    rows.append([name, "—", spread(cell.get("ratio")), "no target", source])
            continue
        if result.name in RENDERERS:
            rows += [[*row, source] for row in board_targets(result.record)]
            continue
        rows += [[t.name, t.limit, t.value, verdict(t.met), source] for t in generic_targets(result.record)]
    lines = [
        START,
        "<!-- generated by `python -m bench.report` from bench/results/*.json; edits are overwritten -->",
        "",
    ]
    if rows:
        lines += table(["benchmark figure", "target", "measured (median)", "verdict", "source"], rows)
        lines += ["", f"Medians of each file's runs ({LOAD_LEGEND})."]
    else:
        lines += ["No benchmark results recorded yet: `make bench` writes them to `bench/results/`."]
    lines += [
        "",
        "Every cell with its spread, floors and notes: [docs/benchmarks.md](docs/benchmarks.md).",
        END,
    ]
    return "\n".join(lines)


def replace_section(readme: str, section: str) -> str:
    """``readme`` with the text between the markers (markers included) replaced by ``section``.

    Raises ValueError when the markers are missing or out of order."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {START} … {END} section")
    return readme[:start] + section + readme[end + len(END) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the page or the README section is stale"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    results = load_results(args.results_dir)
    document = render_document(results)
    readme = replace_section(README.read_text(), render_summary(results))
    stale = [
        path
        for path, text in ((DOC, document), (README, readme))
        if not path.exists() or path.read_text() != text
    ]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is not what bench/results/ says: run `python -m bench.report`")
        return 1 if stale else 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((DOC, document), (README, readme)):
        if path in stale:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    print(f"{len(results)} results file(s); targets: {target_tally(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
