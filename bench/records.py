"""Honest records for every benchmark: the machine facts, repeated-run statistics and one JSON file per bench.

Every figure in README.md and docs/benchmarks.md comes from a file written by ``write_results`` under
bench/results/ (committed), which names the machine, its load before and after, the versions and the git sha.

    cell = summarize([812.0, 790.5, 830.1])  # {"runs": [...], "median": 812.0, "min": 790.5, ...}
    write_results("board", {"cells": [...]})     # -> bench/results/board.json
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
_VERSIONED = ("grpcio", "protobuf", "sqlalchemy", "torch", "torchserve", "pillow", "k6", "psycopg")


def summarize(runs: Sequence[float]) -> dict[str, Any]:
    """Median and min–max of repeated runs (every run kept); raises ValueError for no runs."""
    if not runs:
        raise ValueError("no runs to summarize")
    values = [float(v) for v in runs]
    return {"runs": values, "median": statistics.median(values), "min": min(values), "max": max(values)}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (the machine is shared: every result records them)."""
    return [round(x, 2) for x in os.getloadavg()]


# What the benches and bench.report write themselves: a change there is not a change to the code measured.
_OUTPUTS = (":!bench/results", ":!docs/benchmarks.md", ":!README.md")


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _versions(names: Iterable[str]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def machine_facts() -> dict[str, Any]:
    """Cores, CPU, memory, OS, Python and package versions, git sha (and whether the tree was dirty)."""
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": _versions(_VERSIONED),
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", *_OUTPUTS)),
    }


def write_results(
    name: str, payload: Mapping[str, Any], *, load_before: Sequence[float], out: Path | None = None
) -> Path:
    """Write ``payload`` with the machine facts, timestamps and load averages to bench/results/<name>.json.

    ``load_before`` is ``load_average()`` taken when the bench started; the load now is recorded beside it.
    """
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "bench": name,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "load_average": {"before": list(load_before), "after": load_average()},
        **payload,
    }
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def measure_and_record(
    name: str, measure: Callable[[], dict[str, Any]], show: Callable[[Mapping[str, Any]], None]
) -> Path:
    """Run ``measure``, write its figures as the record ``name`` (with the load before and after), ``show``
    them and say where they went; the written path."""
    load_before = load_average()
    figures = measure()
    path = write_results(name, figures, load_before=load_before)
    show(figures)
    print(f"load average before {load_before}, after {load_average()}; written to {path}")
    return path


def read_results(name: str) -> dict[str, Any] | None:
    """The committed record of bench ``name``, or None when it has not been run."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        return None
    loaded = json.loads(path.read_text())
    return loaded if isinstance(loaded, dict) else None
