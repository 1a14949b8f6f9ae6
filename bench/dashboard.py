"""The operator's dashboard (issue 12, point 4): one panel list, drawn twice.

``PANELS`` below is the single source of both drawings: ``grafana_dashboard()`` turns it into the Grafana
dashboard committed as docs/dashboard/board.json (PromQL, a ``${DS_PROMETHEUS}`` datasource input, so it
imports into any Grafana), and ``render()`` evaluates the same queries over scraped samples with matplotlib
into docs/dashboard/dashboard.png (rates from counter deltas over a window like ``$__rate_interval``,
quantiles from histogram buckets the way ``histogram_quantile`` interpolates them).

A run scrapes the board's /metrics and TorchServe's every few seconds while a modest load goes through the
board (users signed up and in, posts, comments, reads, photos attached and watched until tagged, two albums
that queue up the tagger, a few refused calls), then saves the samples (docs/dashboard/samples.json) and
draws the picture. With `make run` running in another terminal:

    python -m bench.dashboard --seconds 240                      # board :50051, metrics :9464 and :8082
    python -m bench.dashboard --render-only                      # redraw from the saved samples
    python -m bench.dashboard --write-grafana                    # rewrite board.json from PANELS

TorchServe 0.12 adds to ts_inference_latency_microseconds and ts_queue_latency_microseconds only for REST
predictions, and counts only REST answers in Requests2XX/4XX/5XX; the board calls it over gRPC. Its latency
panel therefore shows the PredictionTime and QueueTime gauges (set for every prediction) instead of a mean
from those counters, which would divide REST time by all requests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import random
import re
import secrets
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.board import BoardClient, BoardClientError

logger = logging.getLogger("bench.dashboard")

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "docs" / "dashboard"
GRAFANA_JSON = OUT_DIR / "board.json"
SAMPLES_JSON = OUT_DIR / "samples.json"
PICTURE = OUT_DIR / "dashboard.png"
SERVICE = "board.v1.BoardService"
RATE = "$__rate_interval"
Matcher = tuple[str, str, str]  # (label, "=" or "!=", value)
Values = list[float]  # one value per scrape; NaN where there is none

# --- the panels: queries that render as PromQL and evaluate over samples ---------------------------------


def _selector(metric: str, where: Sequence[Matcher]) -> str:
    inner = ",".join(f'{label}{op}"{value}"' for label, op, value in where)
    return f"{metric}{{{inner}}}" if inner else metric


def _agg(how: str, by: Sequence[str], inner: str) -> str:
    return f"{how} by ({', '.join(by)}) ({inner})" if by else f"{how}({inner})"


@dataclass(frozen=True)
class Rate:
    """``sum by (by) (rate(metric[$__rate_interval]))``, or ``increase(metric[window])`` when ``window``."""

    metric: str
    by: tuple[str, ...] = ()
    where: tuple[Matcher, ...] = ()
    window: str = ""

    def promql(self) -> str:
        fn = (
            f"increase({_selector(self.metric, self.where)}[{self.window}])"
            if self.window
            else (f"rate({_selector(self.metric, self.where)}[{RATE}])")
        )
        return _agg("sum", self.by, fn)

    def evaluate(self, samples: Samples, window_s: float) -> dict[tuple[str, ...], Values]:
        seconds = _duration(self.window) if self.window else window_s
        out: dict[tuple[str, ...], Values] = {}
        for series in samples.select(self.metric, self.where):
            key = tuple(series.labels.get(label, "") for label in self.by)
            rates = samples.rate(series, seconds, per_second=not self.window)
            out[key] = _add(out.get(key), rates)
        return out


@dataclass(frozen=True)
class Gauge:
    """``how by (by) (metric)``: the gauge as scraped, summed (per process) or maxed (same truth twice)."""

    metric: str
    how: str = "sum"
    by: tuple[str, ...] = ()
    where: tuple[Matcher, ...] = ()

    def promql(self) -> str:
        return _agg(self.how, self.by, _selector(self.metric, self.where))

    def evaluate(self, samples: Samples, window_s: float) -> dict[tuple[str, ...], Values]:
        groups: dict[tuple[str, ...], list[Values]] = {}
        for series in samples.select(self.metric, self.where):
            key = tuple(series.labels.get(label, "") for label in self.by)
            groups.setdefault(key, []).append([math.nan if v is None else v for v in series.values])
        pick = max if self.how == "max" else sum
        return {
            key: [pick(c) if not any(map(math.isnan, c)) else math.nan for c in zip(*rows, strict=True)]
            for key, rows in groups.items()
        }


@dataclass(frozen=True)
class Quantile:
    """``histogram_quantile(q, sum by (le, by) (rate(metric_bucket[$__rate_interval])))``."""

    q: float
    metric: str
    by: tuple[str, ...] = ()
    where: tuple[Matcher, ...] = ()

    def promql(self) -> str:
        rate = f"rate({_selector(self.metric + '_bucket', self.where)}[{RATE}])"
        return f"histogram_quantile({self.q}, {_agg('sum', ('le', *self.by), rate)})"

    def evaluate(self, samples: Samples, window_s: float) -> dict[tuple[str, ...], Values]:
        buckets = Rate(self.metric + "_bucket", ("le", *self.by), self.where).evaluate(samples, window_s)
        grouped: dict[tuple[str, ...], list[tuple[float, Values]]] = {}
        for key, rates in buckets.items():
            grouped.setdefault(key[1:], []).append((float(key[0]), rates))
        out: dict[tuple[str, ...], Values] = {}
        for key, rows in grouped.items():
            rows.sort(key=lambda row: row[0])
            bounds = [le for le, _ in rows]
            columns = zip(*(rates for _, rates in rows), strict=True)
            out[key] = [bucket_quantile(self.q, bounds, list(counts)) for counts in columns]
        return out


@dataclass(frozen=True)
class Ratio:
    """``(numerator) / (denominator)``, e.g. a mean from a histogram's _sum and _count."""

    numerator: Rate
    denominator: Rate

    def promql(self) -> str:
        return f"{self.numerator.promql()} / {self.denominator.promql()}"

    def evaluate(self, samples: Samples, window_s: float) -> dict[tuple[str, ...], Values]:
        num = self.numerator.evaluate(samples, window_s)
        den = self.denominator.evaluate(samples, window_s)
        return {
            key: [a / b if b > 0 else math.nan for a, b in zip(values, den[key], strict=True)]
            for key, values in num.items()
            if key in den
        }


Query = Rate | Gauge | Quantile | Ratio


@dataclass(frozen=True)
class Target:
    query: Query
    legend: str  # Grafana's legendFormat: {{label}} is replaced by the series' label value


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str  # Grafana unit id
    width: int  # of Grafana's 24 columns
    targets: tuple[Target, ...]
    log_scale: bool = False  # for latencies that differ by orders of magnitude between methods


@dataclass(frozen=True)
class Row:
    title: str
    description: str
    panels: tuple[Panel, ...]


_BOARD = (("grpc_service", "=", SERVICE),)
_UNARY = (*_BOARD, ("grpc_type", "=", "unary"))


def _latency(q: float) -> Panel:
    return Panel(
        f"Latency p{round(q * 100)} by method",
        f"{round(q * 100)}th percentile of unary call time on the server (grpc_server_handling_seconds, "
        "interceptor to reply), by method, over all processes and replicas; log scale (sign-up and sign-in "
        "hash passwords on purpose). WatchAttachment is left out: a stream lasts until the photo is tagged.",
        "s",
        6,
        (Target(Quantile(q, "grpc_server_handling_seconds", ("grpc_method",), _UNARY), "{{grpc_method}}"),),
        log_scale=True,
    )


PANELS: tuple[Row, ...] = (
    Row(
        "Board RPCs",
        "board.v1.BoardService as its clients see it: call rate, refusals and latency per method.",
        (
            Panel(
                "RPC rate by method",
                "Calls started per second by method (grpc_server_started_total), all board processes "
                "and replicas summed. For WatchAttachment, streams opened.",
                "reqps",
                6,
                (Target(Rate("grpc_server_started_total", ("grpc_method",), _BOARD), "{{grpc_method}}"),),
            ),
            Panel(
                "Errors by code (non-OK)",
                "Calls per second that ended with a status other than OK (grpc_server_handled_total), by "
                "gRPC code. NOT_FOUND and INVALID_ARGUMENT are the callers' mistakes; UNAVAILABLE, "
                "INTERNAL, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED are the board's.",
                "reqps",
                6,
                (
                    Target(
                        Rate(
                            "grpc_server_handled_total", ("grpc_code",), (*_BOARD, ("grpc_code", "!=", "OK"))
                        ),
                        "{{grpc_code}}",
                    ),
                ),
            ),
            _latency(0.5),
            _latency(0.99),
        ),
    ),
    Row(
        "Tagging",
        "Photos waiting for the model, how long upload → TAGGED takes, and how the calls to TorchServe end.",
        (
            Panel(
                "Tagging backlog",
                "board_tagging_queue: uploads PENDING plus re-tags queued, counted in the database at "
                "each scrape (max over replicas: each reports the same truth); and the attachments not "
                "TAGGED, by status. A queue that keeps growing means TorchServe is too slow or refusing.",
                "short",
                5,
                (
                    Target(Gauge("board_tagging_queue", "max"), "queue"),
                    Target(
                        Gauge("board_attachments", "max", ("status",), (("status", "!=", "TAGGED"),)),
                        "{{status}}",
                    ),
                ),
            ),
            Panel(
                "Attachments by status",
                "Every attachment in the database by tagging status (board_attachments, max over replicas).",
                "short",
                5,
                (Target(Gauge("board_attachments", "max", ("status",)), "{{status}}"),),
            ),
            Panel(
                "Tagging latency (upload → TAGGED)",
                "Median and 90th percentile of the time from AddAttachment to the TAGGED commit "
                "(board_tagging_latency_seconds): queueing behind other photos, retries and the model.",
                "s",
                5,
                (
                    Target(Quantile(0.5, "board_tagging_latency_seconds"), "p50"),
                    Target(Quantile(0.9, "board_tagging_latency_seconds"), "p90"),
                ),
            ),
            Panel(
                "TorchServe calls by outcome",
                "Segmentation calls from the board's tagging workers per second, by outcome "
                "(board_torchserve_calls_total): ok, rejected (the photo), unavailable, timeout, auth "
                "(a refused key), server_error, bad_answer.",
                "ops",
                5,
                (Target(Rate("board_torchserve_calls_total", ("outcome",)), "{{outcome}}"),),
            ),
            Panel(
                "Retries and lease expiries",
                "Over the last 5 minutes: tagging attempts rescheduled after a transient failure "
                "(board_tagging_retries_total) and claims whose lease ran out before the result was "
                "stored (board_tagging_lease_expiries_total: a worker died or TorchServe took too long).",
                "short",
                4,
                (
                    Target(Rate("board_tagging_retries_total", window="5m"), "retries"),
                    Target(Rate("board_tagging_lease_expiries_total", window="5m"), "lease expiries"),
                ),
            ),
        ),
    ),
    Row(
        "TorchServe",
        "TorchServe's own metrics (its metrics port, metrics_mode=prometheus), beside the board's view.",
        (
            Panel(
                "Inference requests",
                "Predictions per second by model (ts_inference_requests_total), REST and gRPC; the board's "
                "tagging calls are gRPC.",
                "reqps",
                6,
                (Target(Rate("ts_inference_requests_total", ("model_name",)), "{{model_name}}"),),
            ),
            Panel(
                "Prediction and queue time",
                "PredictionTime: the handler's time for the latest batch, by model; QueueTime: how long "
                "the latest job waited for a worker (gauges, set for every prediction). TorchServe 0.12 "
                "adds to ts_inference_latency_microseconds / ts_queue_latency_microseconds for REST "
                "predictions only, so a mean from them would be wrong for the board's gRPC calls.",
                "ms",
                6,
                (
                    Target(Gauge("PredictionTime", "max", ("ModelName",)), "prediction {{ModelName}}"),
                    Target(Gauge("QueueTime", "max"), "queue"),
                ),
            ),
            Panel(
                "REST responses by class",
                "TorchServe's REST answers per second by class (Requests2XX / 4XX / 5XX): inference, "
                "management, token and metrics calls over HTTP (Prometheus' own scrapes are 2XX). gRPC "
                "predictions are not counted here.",
                "reqps",
                6,
                tuple(Target(Rate(f"Requests{c}XX"), f"{c}XX") for c in (2, 4, 5)),
            ),
            Panel(
                "Host CPU and memory",
                "CPU and memory use of the host as TorchServe measures it (CPUUtilization, "
                "MemoryUtilization): a busy CPU shows up as longer PredictionTime.",
                "percent",
                6,
                (
                    Target(Gauge("CPUUtilization", "max"), "CPU"),
                    Target(Gauge("MemoryUtilization", "max"), "memory"),
                ),
            ),
        ),
    ),
    Row(
        "Database",
        "The board's database: connections checked out and the SQLite group commit.",
        (
            Panel(
                "Connections in use",
                "Database connections checked out of the pools of all board processes "
                "(board_db_connections_in_use); near the pool size, calls wait for a connection.",
                "short",
                12,
                (Target(Gauge("board_db_connections_in_use"), "in use"),),
            ),
            Panel(
                "Group-commit batch size",
                "Writes committed together by one SQLite group commit, one fsync "
                "(board_group_commit_batch_size): mean and 99th percentile. Batches grow under concurrent "
                "writes; 1 means every write paid its own fsync.",
                "short",
                12,
                (
                    Target(
                        Ratio(
                            Rate("board_group_commit_batch_size_sum"),
                            Rate("board_group_commit_batch_size_count"),
                        ),
                        "mean",
                    ),
                    Target(Quantile(0.99, "board_group_commit_batch_size"), "p99"),
                ),
            ),
        ),
    ),
    Row(
        "Watchers",
        "Clients following their photos' tagging over WatchAttachment.",
        (
            Panel(
                "Open WatchAttachment streams",
                "Streams open now (board_watchers), all processes summed: `board attach --wait`, the Node "
                "flow and other clients waiting for TAGGED. Each holds a server slot until it ends.",
                "short",
                12,
                (Target(Gauge("board_watchers"), "streams"),),
            ),
        ),
    ),
)

# --- Grafana ---------------------------------------------------------------------------------------------

_DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
PANEL_HEIGHT = 8


def layout() -> Iterator[tuple[Row | Panel, dict[str, int]]]:
    """Every row and panel with its Grafana gridPos (rows one unit high, panels left to right)."""
    y = 0
    for row in PANELS:
        yield row, {"h": 1, "w": 24, "x": 0, "y": y}
        x, y = 0, y + 1
        for panel in row.panels:
            yield panel, {"h": PANEL_HEIGHT, "w": panel.width, "x": x, "y": y}
            x += panel.width
        y += PANEL_HEIGHT


def _grafana_panel(item: Row | Panel, grid: dict[str, int], panel_id: int) -> dict[str, Any]:
    common = {"id": panel_id, "title": item.title, "description": item.description, "gridPos": grid}
    if isinstance(item, Row):
        return {**common, "type": "row", "collapsed": False, "panels": []}
    targets = [
        {
            "datasource": _DATASOURCE,
            "editorMode": "code",
            "expr": target.query.promql(),
            "legendFormat": target.legend,
            "range": True,
            "refId": chr(ord("A") + index),
        }
        for index, target in enumerate(item.targets)
    ]
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if item.log_scale:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
    return {
        **common,
        "type": "timeseries",
        "datasource": _DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "unit": item.unit,
                **({} if item.log_scale else {"min": 0}),
                "custom": custom,
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    }


def grafana_dashboard() -> dict[str, Any]:
    """The Grafana dashboard (JSON model, schema 39) for PANELS, importable with any Prometheus datasource."""
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "description": "scrapes the board's --metrics-address and TorchServe's metrics port",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
        ],
        "annotations": {"list": []},
        "description": "Board RPCs, tagging, TorchServe, database, watchers (generated by bench.dashboard).",
        "editable": True,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": [_grafana_panel(item, grid, i) for i, (item, grid) in enumerate(layout(), start=1)],
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["board", "torchserve", "grpc"],
        "templating": {"list": []},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "Board + TorchServe",
        "uid": "board-torchserve",
        "version": 1,
    }


def write_grafana(path: Path = GRAFANA_JSON) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(grafana_dashboard(), indent=2, ensure_ascii=False) + "\n")


# --- samples: the Prometheus text format, scraped over time ----------------------------------------------

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_exposition(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(sample name as exposed, labels, value) for every sample line. Names are kept as they are on the
    wire (prometheus_client's own parser adds _total to counters, which Prometheus does not)."""
    samples = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or line.startswith("#"):
            continue
        name, body, value = match.groups()
        labels = {
            k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            for k, v in _LABEL.findall(body or "")
        }
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

    def add_scrape(
        self, at: float, scraped: dict[str, list[tuple[str, dict[str, str], float]] | None]
    ) -> None:
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


def _add(total: Values | None, values: Values) -> Values:
    return list(values) if total is None else [a + b for a, b in zip(total, values, strict=True)]


def _duration(text: str) -> float:
    return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]


def save_samples(samples: Samples, path: Path = SAMPLES_JSON) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(samples.to_json(), separators=(",", ":")) + "\n")


def load_samples(path: Path = SAMPLES_JSON) -> Samples:
    return Samples.from_json(json.loads(path.read_text()))


# --- the picture -----------------------------------------------------------------------------------------

_UNITS = {"reqps": "per second", "ops": "per second", "s": "seconds", "ms": "milliseconds", "percent": "%"}


def _legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def panel_lines(panel: Panel, samples: Samples, window_s: float) -> list[tuple[str, Values]]:
    """The panel's lines (legend, values per scrape), as Grafana would draw them from Prometheus."""
    lines = []
    for target in panel.targets:
        by: tuple[str, ...] = getattr(target.query, "by", ())
        for key, values in sorted(target.query.evaluate(samples, window_s).items()):
            lines.append((_legend(target.legend, dict(zip(by, key, strict=True))), values))
    return lines


def render(samples: Samples, path: Path = PICTURE, window_s: float = 60.0) -> None:
    """Draw PANELS from ``samples`` into a PNG at ``path``, laid out on Grafana's grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit_w, unit_h, header = 0.95, 0.42, 1.0  # inches per grid unit; title band
    placed = list(layout())
    fig_w = 24 * unit_w
    fig_h = max(g["y"] + g["h"] for _, g in placed) * unit_h + header + 0.2
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=80)
    fig.text(0.005, 1 - 0.4 / fig_h, _title(samples.meta), fontsize=15, weight="bold", va="center")
    start = dt.datetime.fromtimestamp(samples.times[0] if samples.times else 0, dt.UTC)
    fig.text(0.005, 1 - 0.8 / fig_h, f"x axes: minutes since {start:%H:%M:%S} UTC", fontsize=10, va="center")

    def rect(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        """Grid units (y down from the top) to figure fractions (y up from the bottom)."""
        return (
            x * unit_w / fig_w,
            1 - (header + (y + h) * unit_h) / fig_h,
            w * unit_w / fig_w,
            h * unit_h / fig_h,
        )

    for item, grid in placed:
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        if isinstance(item, Row):
            fig.text(0.005, rect(x, y, w, h)[1], item.title, fontsize=13, weight="bold", color="#1f4e79")
        else:
            # Room inside the cell: axis labels on the left, the title on top, ticks and legend below.
            _draw_panel(fig.add_axes(rect(x + 0.8, y + 0.6, w - 1.0, h - 2.6)), item, samples, window_s, w)
    # The notes go in the free space right of the last row's panels.
    last_row = [g for item, g in placed if isinstance(item, Panel) and g["y"] == placed[-1][1]["y"]]
    free_x = max(g["x"] + g["w"] for g in last_row)
    left, bottom, _, height = rect(
        free_x + 0.8, last_row[0]["y"] + 0.6, 24 - free_x - 1.0, PANEL_HEIGHT - 2.6
    )
    fig.text(left, bottom + height, _notes(samples.meta, window_s), va="top", fontsize=10, family="monospace")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _draw_panel(ax: Any, panel: Panel, samples: Samples, window_s: float, width: int) -> None:
    start = samples.times[0] if samples.times else 0.0
    minutes = [(t - start) / 60 for t in samples.times]
    ax.set_title(panel.title, fontsize=11, loc="left")
    lines = panel_lines(panel, samples, window_s)
    for legend, values in lines:
        ax.plot(minutes, values, linewidth=1.4, label=legend)
    ax.set_ylabel(_UNITS.get(panel.unit, ""), fontsize=8)
    if panel.log_scale:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    if not lines:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="grey")
        return
    # Below the plot, as Grafana puts it; as many columns as the panel's width holds.
    ax.legend(
        fontsize=7.5, loc="upper left", bbox_to_anchor=(0.0, -0.1), ncol=max(1, width * 2 // 3), frameon=False
    )


def _title(meta: dict[str, Any]) -> str:
    model = meta.get("model", {})
    served = f"{model.get('name', '?')} = {model.get('arch', '?')}, weights {model.get('weights', '?')}"
    if model.get("untrained"):
        served += " (UNTRAINED)"
    return f"Board + TorchServe · {meta.get('date', '?')} · git {meta.get('git', '?')} · model {served}"


def _notes(meta: dict[str, Any], window_s: float) -> str:
    load = meta.get("load", {})
    codes = ", ".join(f"{k} {v}" for k, v in sorted(load.get("codes", {}).items()))
    return "\n".join(
        [
            f"{meta.get('seconds', '?')} s of load from {load.get('users', '?')} users through the board,",
            f"scraped every {meta.get('interval_s', '?')} s; rates over {window_s:g} s ($__rate_interval).",
            f"calls made: {load.get('calls', '?')} ({codes})",
            f"photos attached: {load.get('photos', '?')}, tagged: {load.get('tagged', '?')}",
            "",
            "docs/dashboard/board.json holds the same panels",
            "for Grafana; regenerate this picture with",
            "python -m bench.dashboard [--render-only]",
        ]
    )


# --- the load ----------------------------------------------------------------------------------------------


def demo_photos() -> list[tuple[str, bytes]]:
    """The generated scenes of `board demo` (320x240 JPEG)."""
    from clients.attachment_cli import _demo_images

    return list(_demo_images(None, 5))


@dataclass
class LoadStats:
    users: int
    calls: Counter[str] = field(default_factory=Counter)
    photos: int = 0
    tagged: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, code: str) -> None:
        with self.lock:
            self.calls[code] += 1

    def summary(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "calls": sum(self.calls.values()),
            "codes": dict(self.calls),
            "photos": self.photos,
            "tagged": self.tagged,
        }


@dataclass
class _User:
    """One load user's state: its signed-in client, its own posts, its open watches."""

    client: BoardClient
    rng: random.Random
    posts: list[int] = field(default_factory=list)
    watches: list[Future[None]] = field(default_factory=list)


class LoadDriver:
    """Board users at a modest pace: reads most, writes some, a photo now and then (two albums at once), a
    few refused calls; every photo is watched over WatchAttachment until it is tagged."""

    def __init__(self, target: str, users: int, stop: threading.Event, seconds: float) -> None:
        self.target, self.stop, self.seconds = target, stop, seconds
        self.stats = LoadStats(users)
        self.photos = demo_photos()
        self.posts: list[int] = []  # everyone's, for reads and comments
        self.watchers = ThreadPoolExecutor(max_workers=64, thread_name_prefix="watch")
        self.anonymous = BoardClient(target, timeout=30.0)

    def run(self) -> None:
        """Until ``stop`` is set, then until every photo is tagged (or its watch times out)."""
        threads = [threading.Thread(target=self._user, args=(i,)) for i in range(self.stats.users)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.watchers.shutdown(wait=True)
        self.anonymous.close()

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except BoardClientError as exc:
            self.stats.count(exc.code.name)
            return None
        self.stats.count("OK")
        return result

    def _user(self, index: int) -> None:
        password = secrets.token_urlsafe(18)
        email = f"dash-{time.strftime('%H%M%S')}-{secrets.token_hex(3)}@example.org"
        with BoardClient(self.target, timeout=30.0) as client:
            user = _User(client, random.Random(index))
            if self._call(lambda: client.create_user(f"Reader {index + 1}", email, password)) is None or (
                self._call(lambda: client.sign_in(email, password)) is None
            ):
                logger.error("user %d could not sign up and in; it sits this run out", index)
                return
            started = time.monotonic()
            albums = [self.seconds * 0.15, self.seconds * 0.5] if index == 0 else []
            while not self.stop.is_set():
                if albums and time.monotonic() - started >= albums[0]:
                    albums.pop(0)
                    self._album(user)
                self._act(user)
                self.stop.wait(user.rng.expovariate(1 / 0.5))
            wait(user.watches)  # the client stays open for its watches
            self._call(client.sign_out)

    def _act(self, user: _User) -> None:
        roll, client = user.rng.random(), user.client
        post = user.rng.choice(self.posts) if self.posts else 0
        if roll < 0.10 or not user.posts:
            self._new_post(user, "Weekend", "Photos from the lake")
        elif roll < 0.40:
            self._call(lambda: client.get_post(post))
        elif roll < 0.60:
            self._call(lambda: client.list_posts(page_size=20))
        elif roll < 0.70:
            self._call(lambda: client.create_comment(post, 0, "Lovely light"))
        elif roll < 0.80:
            self._call(lambda: client.list_comments(post, page_size=20))
        elif roll < 0.88:
            self._call(lambda: client.list_attachments_page(post, page_size=10))
        elif roll < 0.89:
            self._photo(user, user.rng.choice(user.posts))
        elif roll < 0.94:
            self._call(lambda: client.get_attachment(user.rng.randint(1, 50)))
        else:
            self._refused(user)

    def _new_post(self, user: _User, title: str, content: str) -> int | None:
        made = self._call(lambda: user.client.create_post(0, title, content))
        if made is None:
            return None
        user.posts.append(int(made.id))
        self.posts.append(int(made.id))
        return int(made.id)

    def _photo(self, user: _User, post: int) -> None:
        name, data = user.rng.choice(self.photos)
        added = self._call(lambda: user.client.add_attachment(post, name, data))
        if added is not None:
            with self.stats.lock:
                self.stats.photos += 1
            user.watches.append(self.watchers.submit(self._watch, user.client, int(added.id)))

    def _album(self, user: _User) -> None:
        post = self._new_post(user, "Album", "Six photos at once")
        for _ in range(6 if post else 0):
            self._photo(user, post or 0)

    def _watch(self, client: BoardClient, attachment_id: int) -> None:
        try:
            done = client.wait_for_tagging(attachment_id, timeout=max(60.0, self.seconds))
        except (TimeoutError, BoardClientError) as exc:
            logger.warning("attachment %d: %s", attachment_id, exc)
            return
        with self.stats.lock:
            if done.HasField("model") and done.model.arch:
                self.stats.tagged += 1
                model = done.model
                self.stats.model = {
                    "arch": model.arch,
                    "weights": model.weights,
                    "untrained": model.untrained,
                    "archive_sha256": model.archive_sha256[:12],
                }

    def _refused(self, user: _User) -> None:
        """Callers' mistakes, so the error panel has something to show."""
        mistake, client = user.rng.randrange(3), user.client
        if mistake == 0:
            self._call(lambda: client.get_post(10**12))  # NOT_FOUND
        elif mistake == 1:
            self._call(lambda: client.create_post(0, "", "no title"))  # INVALID_ARGUMENT
        else:
            self._call(lambda: self.anonymous.create_post(0, "Hi", "not signed in"))  # UNAUTHENTICATED


# --- the run ---------------------------------------------------------------------------------------------


def scrape(url: str, timeout: float = 5.0) -> list[tuple[str, dict[str, str], float]] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a URL we were given)
            return parse_exposition(response.read().decode())
    except OSError as exc:
        logger.warning("scrape of %s failed: %s", url, exc)
        return None


def git_sha() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def run(args: argparse.Namespace) -> Samples:
    sources = {"board": args.board_metrics, "torchserve": args.torchserve_metrics}
    samples = Samples(
        meta={
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "git": git_sha(),
            "seconds": args.seconds,
            "interval_s": args.interval,
            "sources": sources,
        }
    )
    stop = threading.Event()
    driver = LoadDriver(args.board_target, args.users, stop, args.seconds)

    def scrape_all() -> None:
        samples.add_scrape(time.time(), {name: scrape(url) for name, url in sources.items()})
        calls = sum(driver.stats.calls.values())
        print(f"\r{len(samples.times)} scrapes, {calls} calls", end="", flush=True)

    scrape_all()
    load = threading.Thread(target=driver.run, name="load")
    load.start()
    began = time.monotonic()
    try:
        # On a fixed cadence, however long a scrape takes (the board counts its database at every scrape).
        for tick in range(1, int(args.seconds / args.interval) + 1):
            time.sleep(max(0.0, began + tick * args.interval - time.monotonic()))
            scrape_all()
        stop.set()
        # The photos still queued are tagged and their watchers end: the picture shows the queue emptying.
        while load.is_alive():
            load.join(args.interval)
            scrape_all()
        for _ in range(args.drain_scrapes):
            time.sleep(args.interval)
            scrape_all()
    finally:
        stop.set()
        load.join()
    print()
    model_names = {s.labels.get("model_name", "") for s in samples.select("ts_inference_requests_total")}
    samples.meta["model"] = {"name": ",".join(sorted(model_names)) or "?", **driver.stats.model}
    samples.meta["load"] = driver.stats.summary()
    return samples


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--board-metrics", default="http://127.0.0.1:9464/metrics")
    parser.add_argument("--torchserve-metrics", default="http://127.0.0.1:8082/metrics")
    parser.add_argument("--board-target", default="127.0.0.1:50051", help="HOST:PORT of the board's gRPC")
    parser.add_argument("--seconds", type=float, default=240.0, help="how long to drive load")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between scrapes")
    parser.add_argument("--drain-scrapes", type=int, default=4, help="scrapes once every photo is tagged")
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--window", type=float, default=60.0, help="rate window of the picture, seconds")
    parser.add_argument("--samples", type=Path, default=SAMPLES_JSON)
    parser.add_argument("--png", type=Path, default=PICTURE)
    parser.add_argument("--render-only", action="store_true", help="redraw from --samples, run nothing")
    parser.add_argument("--write-grafana", action="store_true", help=f"write {GRAFANA_JSON.name} and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    if args.write_grafana:
        write_grafana()
        print(f"wrote {GRAFANA_JSON}")
        return 0
    if args.render_only:
        samples = load_samples(args.samples)
    else:
        samples = run(args)
        save_samples(samples, args.samples)
        print(f"samples: {args.samples} ({len(samples.times)} scrapes, {len(samples.series)} series)")
        print(f"load: {json.dumps(samples.meta['load'])}")
    render(samples, args.png, args.window)
    print(f"picture: {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
