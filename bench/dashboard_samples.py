"""Scraped Prometheus samples over time and the arithmetic Prometheus does on them.

``parse_exposition`` reads the text format keeping names as they are on the wire; ``Samples`` holds one
value per scrape for every series (saved as docs/dashboard/samples.json); ``Samples.rate`` is ``rate()`` /
``increase()`` over a trailing window, ``bucket_quantile`` is ``histogram_quantile``'s interpolation.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLES_JSON = Path(__file__).resolve().parent.parent / "docs" / "dashboard" / "samples.json"
Matcher = tuple[str, str, str]  # (label, "=" or "!=", value)
Values = list[float]  # one value per scrape; NaN where there is none
Scraped = list[tuple[str, dict[str, str], float]]  # (name, labels, value) of one scrape

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


_ESCAPE = re.compile(r"\\(.)")


def _unescape(match: re.Match[str]) -> str:
    return "\n" if match.group(1) == "n" else match.group(1)


def parse_exposition(text: str) -> Scraped:
    """(sample name as exposed, labels, value) for every sample line. Names are kept as they are on the
    wire (prometheus_client's own parser adds _total to counters, which Prometheus does not)."""
    samples = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or line.startswith("#"):
            continue
        name, body, value = match.groups()
        labels = {k: _ESCAPE.sub(_unescape, v) for k, v in _LABEL.findall(body or "")}
        samples.append((name, labels, float(value)))
    return samples


def _kept(name: str) -> bool:
    """The board's and TorchServe's own samples (not the exporters' process_*/python_* ones)."""
    return not name.startswith(("process_", "python_"))


@dataclass
class Series:
    source: str
    name: str
    labels: dict[str, str]
    values: list[float | None]


@dataclass
class Samples:
    """Scrapes over time: ``times`` (unix seconds), per source whether each scrape answered, and series."""

    meta: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    answered: dict[str, list[bool]] = field(default_factory=dict)
    series: list[Series] = field(default_factory=list)
    _index: dict[tuple[str, str, tuple[tuple[str, str], ...]], Series] = field(
        default_factory=dict, repr=False
    )

    def add_scrape(self, at: float, scraped: dict[str, Scraped | None]) -> None:
        """One scrape of every source (None: it did not answer)."""
        self.times.append(at)
        for source, rows in scraped.items():
            self.answered.setdefault(source, [False] * (len(self.times) - 1)).append(rows is not None)
            for name, labels, value in rows or ():
                if not _kept(name):
                    continue
                key = (source, name, tuple(sorted(labels.items())))
                series = self._index.get(key)
                if series is None:
                    series = self._index[key] = Series(source, name, labels, [None] * (len(self.times) - 1))
                    self.series.append(series)
                series.values.append(value)
        for series in self.series:
            series.values.extend([None] * (len(self.times) - len(series.values)))

    def select(self, name: str, where: Sequence[Matcher] = ()) -> list[Series]:
        def matches(series: Series) -> bool:
            return all((series.labels.get(k, "") == v) == (op == "=") for k, op, v in where)

        return [s for s in self.series if s.name == name and matches(s)]

    def rate(self, series: Series, window_s: float, *, per_second: bool = True) -> Values:
        """Counter increase over the trailing window (resets counted as such), per second if asked. A series
        absent from an answered scrape counts 0: labelled counters appear at their first increment."""
        answered = self.answered.get(series.source, [True] * len(self.times))
        points = [
            (t, 0.0 if v is None else v)
            for t, v, ok in zip(self.times, series.values, answered, strict=True)
            if ok
        ]
        at = {t: i for i, (t, _) in enumerate(points)}
        out: Values = []
        for t in self.times:
            i = at.get(t)
            if i is None or i == 0:
                out.append(math.nan)
                continue
            j = i - 1
            while j > 0 and t - points[j - 1][0] <= window_s + 1e-6:
                j -= 1
            gained = sum(
                b - a if b >= a else b
                for (_, a), (_, b) in zip(points[j:i], points[j + 1 : i + 1], strict=True)
            )
            out.append(gained / (t - points[j][0]) if per_second else gained)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "times": self.times,
            "answered": self.answered,
            "series": [
                {"source": s.source, "name": s.name, "labels": s.labels, "values": s.values}
                for s in self.series
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Samples:
        samples = cls(meta=data["meta"], times=data["times"], answered=data["answered"])
        for row in data["series"]:
            series = Series(row["source"], row["name"], row["labels"], row["values"])
            samples.series.append(series)
            samples._index[(series.source, series.name, tuple(sorted(series.labels.items())))] = series
        return samples


def bucket_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float:
    """Prometheus' histogram_quantile over cumulative bucket counts (upper bounds ascending, +Inf last)."""
    if not bounds or not math.isinf(bounds[-1]) or any(map(math.isnan, counts)) or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(bounds) - 1:
        return bounds[-2] if len(bounds) > 1 else math.nan
    start, below = (0.0, 0.0) if b == 0 else (bounds[b - 1], counts[b - 1])
    inside = counts[b] - below
    return start + (bounds[b] - start) * ((rank - below) / inside if inside > 0 else 1.0)


def add_values(total: Values | None, values: Values) -> Values:
    return list(values) if total is None else [a + b for a, b in zip(total, values, strict=True)]


def duration_seconds(text: str) -> float:
    """A PromQL duration such as 30s, 5m or 1h in seconds."""
    return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]


def save_samples(samples: Samples, path: Path = SAMPLES_JSON) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(samples.to_json(), separators=(",", ":")) + "\n")


def load_samples(path: Path = SAMPLES_JSON) -> Samples:
    return Samples.from_json(json.loads(path.read_text()))
