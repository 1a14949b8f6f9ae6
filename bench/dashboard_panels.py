"""What the dashboard shows: rows of panels whose queries render as PromQL and evaluate over samples.

Each query (``Rate``, ``Gauge``, ``Quantile``, ``Ratio``) is written once: ``promql()`` gives the expression
Grafana runs against Prometheus, ``evaluate()`` computes the same lines from scraped samples, so the
committed Grafana JSON and the picture cannot drift apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bench.dashboard_samples import Matcher, Samples, Values, add_values, bucket_quantile, duration_seconds

SERVICE = "board.v1.BoardService"
RATE = "$__rate_interval"
PANEL_HEIGHT = 8  # Grafana grid units


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
        seconds = duration_seconds(self.window) if self.window else window_s
        out: dict[tuple[str, ...], Values] = {}
        for series in samples.select(self.metric, self.where):
            key = tuple(series.labels.get(label, "") for label in self.by)
            rates = samples.rate(series, seconds, per_second=not self.window)
            out[key] = add_values(out.get(key), rates)
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


def _legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def target_lines(target: Target, samples: Samples, window_s: float) -> list[tuple[str, Values]]:
    """One query's lines (legend, values per scrape), as Grafana would draw them from Prometheus."""
    by: tuple[str, ...] = getattr(target.query, "by", ())
    return [
        (_legend(target.legend, dict(zip(by, key, strict=True))), values)
        for key, values in sorted(target.query.evaluate(samples, window_s).items())
    ]


def panel_lines(panel: Panel, samples: Samples, window_s: float) -> list[tuple[str, Values]]:
    """Every line of the panel, its queries in order."""
    return [line for target in panel.targets for line in target_lines(target, samples, window_s)]
