"""What /proc says about the servers under measurement: their process trees, memory and CPU time."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first); None when ``pid`` is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), depth first."""
    parents: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        fields = _stat_fields(int(stat.split("/")[2]))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (processes that are gone count nothing)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / _CLOCK_TICKS


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid``; None when ``pid`` is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds so far of ``pid`` and of each of its descendants, by pid."""
    return {member: cpu_seconds([member]) for member in (pid, *descendants(pid))}


def idle_seconds() -> float:
    """Seconds that the machine's CPUs, all together, spent idle (or waiting on I/O) since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / _CLOCK_TICKS


def pin(pids: Iterable[int], cpus: set[int]) -> None:
    """Run every thread of ``pids`` on ``cpus`` only (threads started later inherit it from their creator);
    threads that are gone are skipped."""
    for pid in pids:
        for task in glob.glob(f"/proc/{pid}/task/[0-9]*"):
            try:
                os.sched_setaffinity(int(task.rsplit("/", 1)[1]), cpus)
            except OSError:  # the thread ended meanwhile
                continue


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
    for member in [pid, *descendants(pid)]:
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
