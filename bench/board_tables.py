"""The board benchmark's tables as printed: one per database, then the targets with their verdicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.board_figures import spread


def _met(flag: bool | None) -> str:
    return {True: "met", False: "NOT MET", None: "not run"}[flag]


def print_table(table: Mapping[str, Any]) -> None:
    setup = table["setup"]
    print(
        f"\n== {setup['database']}; board {setup['board_processes']} process(es); auth: {table['auth']}; "
        f"{setup['runs']} × {setup['seconds_per_run']:g} s per cell =="
    )
    reuse = setup["board_processes"] > 1
    database = any("database_cores" in cell["board"] for cell in table["cells"])
    header = (
        f"{'operation':<11}{'c':>3}{'floor rps':>11}{'board rps':>11}  {'board/floor':<19}"
        + (f"{'/reuse-port floor':<19}" if reuse else "")
        + f"{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}  cores: floor/board/k6"
        + ("/database" if database else "")
        + " (idle)"
    )
    print(header)
    print("-" * len(header))
    for cell in table["cells"]:
        print(
            f"{cell['operation']:<11}{cell['concurrency']:>3}{cell['floor']['rps']['median']:>11.0f}"
            f"{cell['board']['rps']['median']:>11.0f}  {spread(cell['ratio']):<19}"
            + (f"{spread(cell['ratio_reuseport']):<19}" if reuse else "")
            + f"{cell['board']['p50_ms']['median']:>8.2f}{cell['board']['p99_ms']['median']:>8.2f}"
            f"{cell['board']['errors']:>8}  {cell['floor']['server_cores']['median']:.2f}/"
            f"{cell['board']['server_cores']['median']:.2f}/{cell['board']['k6_cores']['median']:.2f}"
            + (f"/{cell['board']['database_cores']['median']:.2f}" if database else "")
            + (f" ({cell['board']['idle_cores']['median']:.2f})" if "idle_cores" in cell["board"] else "")
        )
    rss = table["rss"]
    each = ", ".join(f"{p['rss_mb']:.0f} ({p['role']})" for p in rss["processes"])
    print(f"RSS after {rss['after']}: {each} MB (sum {rss['sum_mb']:.0f} MB); {rss['mixed_rps']:.0f} rps")
    metrics = table.get("metrics")
    if metrics and metrics["status"] == "run":
        print(f"metrics on vs off, GetPost c16: cost {spread(metrics['cost'], 3)}")
    for note in table["notes"]:
        print(f"  note: {note}")


def print_http_table(table: Mapping[str, Any]) -> None:
    setup = table["setup"]
    print(
        f"\n== the HTTP listener (Connect binary, HTTP/1.1) against gRPC on the same board; "
        f"{setup['board_processes']} process(es); {setup['runs']} × {setup['seconds_per_run']:g} s "
        "per cell =="
    )
    header = (
        f"{'operation':<11}{'c':>3}{'gRPC rps':>10}{'Connect rps':>13}  {'Connect/gRPC':<19}"
        f"{'p50 ms':>8}{'p99 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for cell in table["cells"]:
        connect = cell["connect"]
        print(
            f"{cell['operation']:<11}{cell['concurrency']:>3}{cell['grpc']['rps']['median']:>10.0f}"
            f"{connect['rps']['median']:>13.0f}  {spread(cell['ratio']):<19}"
            f"{connect['p50_ms']['median']:>8.2f}{connect['p99_ms']['median']:>8.2f}"
        )


def print_targets(
    targets: Sequence[Mapping[str, Any]],
    title: str = "Targets (ratios against the one-process aio floor; median of the runs):",
) -> None:
    """The targets, each met or not, on the median."""
    if not targets:
        return
    print(f"\n{title}")
    for row in targets:
        value = "—" if row["value"] is None else f"{row['value']:g}"
        verdict = _met(row["met"])
        if row["met"] and row["met_every_run"] is False:
            verdict += " (not in every run)"
        note = f"  ({row['note']})" if row.get("note") else ""
        print(f"  {row['target']:<34} {row['comparison']} {row['limit']:<6g} {value:>9}  {verdict}{note}")
