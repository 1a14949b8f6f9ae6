"""docs/dashboard/board.json is Grafana JSON generated from bench.dashboard's panels, and every PromQL
expression in it names metrics that really exist: the board's from a scrape of a real board server (tagging
towards a TorchServe that is not there, so its call outcomes and retries show), TorchServe's from its own
metrics.yaml. The renderer draws from a small samples file. No TorchServe, no model, no load."""

from __future__ import annotations

import json
import math
import re
import urllib.request
from pathlib import Path

import pytest
import ts
import yaml
from PIL import Image

from bench import dashboard_panels, dashboard_render
from bench.dashboard_samples import Samples, bucket_quantile, load_samples, parse_exposition, save_samples
from clients.board import NotFoundError
from tests.board.conftest import sign_up as board_sign_up
from tests.board.conftest import start_board_server
from tests.support import REPO_ROOT, Processes, free_port, wait_for

BOARD_JSON = REPO_ROOT / "docs" / "dashboard" / "board.json"
METRICS_YAML = Path(ts.__file__).parent / "configs" / "metrics.yaml"
ROWS = ["Board RPCs", "Tagging", "TorchServe", "Database", "Watchers"]
METRICS_URL = re.compile(r"metrics on (http://\S+/metrics)")
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, keywords, labels or
    label values."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations, $__rate_interval
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    functions = set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\(", text))
    return set(re.findall(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)", text)) - functions - PROMQL_KEYWORDS


def dashboard_json() -> dict[str, object]:
    data = json.loads(BOARD_JSON.read_text())
    assert isinstance(data, dict)
    return data


def expressions_by_row() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    current = ""
    for panel in dashboard_json()["panels"]:  # type: ignore[attr-defined]
        if panel["type"] == "row":
            current = panel["title"]
            rows[current] = []
        else:
            rows[current] += [target["expr"] for target in panel["targets"]]
    return rows


# --- the JSON ---------------------------------------------------------------------------------------------


def test_dashboard_json_is_what_the_panels_generate() -> None:
    generated = json.loads(json.dumps(dashboard_render.grafana_dashboard()))
    assert dashboard_json() == generated, "run python -m bench.dashboard --write-grafana"


def test_dashboard_json_is_importable_grafana_json() -> None:
    data = dashboard_json()
    assert data["schemaVersion"] == 39
    assert data["title"] and data["uid"] and data["id"] is None
    inputs = data["__inputs"]
    assert isinstance(inputs, list)
    assert [(i["name"], i["type"], i["pluginId"]) for i in inputs] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    panels = data["panels"]
    assert isinstance(panels, list)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    assert [p["title"] for p in panels if p["type"] == "row"] == ROWS
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["description"].strip(), f"{panel['title']} has no description"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["type"] == "timeseries"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["fieldConfig"]["defaults"]["unit"]
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets)
        for target in targets:
            expr = target["expr"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            for opening, closing in ("()", "[]", "{}"):
                assert expr.count(opening) == expr.count(closing), expr
            assert metric_names(expr), f"no metric in {expr}"


# --- the names against what really exists -------------------------------------------------------------------


def torchserve_names() -> set[str]:
    """TorchServe's metric names from its metrics.yaml; in Prometheus mode it exposes them as written (a
    scrape of TorchServe 0.12 shows Requests2XX and ts_inference_requests_total, no suffixes added)."""
    config = yaml.safe_load(METRICS_YAML.read_text())
    return {
        metric["name"]
        for section in ("ts_metrics", "model_metrics")
        for kind in config.get(section, {}).values()
        for metric in kind
    }


@pytest.mark.slow
def test_every_expression_names_a_metric_the_board_or_torchserve_exports(
    processes: Processes, tmp_path: Path
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # a TorchServe that is not there: calls end 'unavailable'
    board = start_board_server(
        processes,
        f"sqlite:///{tmp_path / 'board.db'}",
        tmp_path,
        extra=("--segmentation-target", nowhere, "--tagging-poll", "0.2", "--tagging-backoff-max", "1"),
    )
    member = board_sign_up(board.target)
    post = member.client.create_post(0, "Lake", "photos")
    member.client.add_attachment(post.id, "lake.png", _png())
    member.client.list_posts(page_size=5)
    with pytest.raises(NotFoundError):
        member.client.get_post(10**12)
    match = METRICS_URL.search(board.log())
    assert match, board.log()

    def scraped() -> str:
        with urllib.request.urlopen(match.group(1), timeout=10) as response:
            return str(response.read().decode())

    def settled() -> bool:
        # A retry, and the calls above written to the metrics (a process writes them in batches, ~50 ms
        # after it last went idle): the last of them, GetPost, among them.
        text = scraped()
        return "board_tagging_retries_total 1" in text and 'grpc_method="GetPost"' in text

    wait_for("a TorchServe call outcome, a retry and every call counted", settled, 60)
    text = scraped()
    member.client.close()
    board_names = {name for name, _, _ in parse_exposition(text)}
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    ts_names = torchserve_names()

    rows = expressions_by_row()
    used = set()
    for row, expressions in rows.items():
        for expr in expressions:
            names = metric_names(expr)
            used |= names
            known = ts_names if row == "TorchServe" else board_names
            assert names <= known, f"{row}: {expr} names {sorted(names - known)}, not exported"
    # prometheus-client's *_created series (one process: a plain registry) are start times, not metrics.
    ours = {f for f in families if f.startswith(("board_", "grpc_server_")) and not f.endswith("_created")}
    unused = {f for f in ours if not any(name.startswith(f.removesuffix("_total")) for name in used)}
    assert not unused, f"metrics the board exports that no panel shows: {sorted(unused)}"


def _png() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


# --- the arithmetic and the picture ------------------------------------------------------------------------


def test_exposition_names_stay_as_on_the_wire() -> None:
    text = "\n".join(
        [
            "# TYPE Requests2XX counter",
            'Requests2XX{Level="Host",Hostname="vm",} 12.0',
            'x_bucket{le="+Inf",path="a\\\\b \\"q\\" \\n"} 3 1700000000000',
            "board_watchers 0.0",
        ]
    )
    assert parse_exposition(text) == [
        ("Requests2XX", {"Level": "Host", "Hostname": "vm"}, 12.0),
        ("x_bucket", {"le": "+Inf", "path": 'a\\b "q" \n'}, 3.0),
        ("board_watchers", {}, 0.0),
    ]


def test_rate_is_counter_increase_over_time_and_survives_a_reset() -> None:
    samples = Samples()
    for at, value in ((0, 0.0), (10, 10.0), (20, 30.0), (30, 5.0)):  # reset between 20 and 30
        samples.add_scrape(at, {"board": [("x_total", {}, value)]})
    (series,) = samples.select("x_total")
    rates = samples.rate(series, window_s=10)
    assert math.isnan(rates[0])
    assert rates[1:] == [1.0, 2.0, 0.5]
    assert samples.rate(series, window_s=30)[3] == pytest.approx(35 / 30)


def test_a_labelled_counter_born_during_the_run_counts_from_zero() -> None:
    samples = Samples()
    samples.add_scrape(0, {"board": []})
    samples.add_scrape(10, {"board": [("x_total", {"code": "NOT_FOUND"}, 4.0)]})
    samples.add_scrape(20, {"board": None})  # no answer: no value, not a reset
    assert samples.rate(samples.select("x_total")[0], window_s=10)[1] == 0.4


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    bounds = [0.1, 1.0, 10.0, math.inf]
    assert bucket_quantile(0.5, bounds, [0, 10, 20, 20]) == pytest.approx(0.1 + 0.9 * 1.0)
    assert bucket_quantile(0.25, bounds, [0, 10, 20, 20]) == pytest.approx(0.1 + 0.9 * 0.5)
    assert bucket_quantile(0.99, bounds, [0, 0, 0, 5]) == 10.0  # in +Inf: the highest finite bound
    assert math.isnan(bucket_quantile(0.5, bounds, [0, 0, 0, 0]))


def _board_text(step: int) -> str:
    rpc = 'grpc_type="unary",grpc_service="board.v1.BoardService",grpc_method="GetPost"'
    lines = [
        f"grpc_server_started_total{{{rpc}}} {10 * step}",
        f'grpc_server_handled_total{{{rpc},grpc_code="NOT_FOUND"}} {step}',
        f"board_tagging_queue {3 - step}",
        f'board_attachments{{status="PENDING"}} {3 - step}',
        f'board_attachments{{status="TAGGED"}} {step}',
        f'board_torchserve_calls_total{{outcome="ok"}} {step}',
        "board_tagging_retries_total 0",
        "board_db_connections_in_use 1",
        f"board_watchers {3 - step}",
        f"board_group_commit_batch_size_sum {2 * step}",
        f"board_group_commit_batch_size_count {step}",
    ]
    for le, share in (("0.001", 0.5), ("0.01", 0.9), ("+Inf", 1.0)):
        labels = f'grpc_type="unary",grpc_service="board.v1.BoardService",grpc_method="GetPost",le="{le}"'
        lines.append(f"grpc_server_handling_seconds_bucket{{{labels}}} {10 * step * share}")
    for le, count in (("1.0", 0), ("5.0", step), ("+Inf", step)):
        lines.append(f'board_tagging_latency_seconds_bucket{{le="{le}"}} {count}')
    return "\n".join(lines)


def _torchserve_text(step: int) -> str:
    return "\n".join(
        [
            'ts_inference_requests_total{model_name="deeplabv3",model_version="1.0",hostname="vm",} '
            f"{step}",
            f'PredictionTime{{ModelName="deeplabv3",Level="Model",Hostname="vm",}} {900 + step}',
            f'Requests2XX{{Level="Host",Hostname="vm",}} {5 * step}',
            f'CPUUtilization{{Level="Host",Hostname="vm",}} {50.0}',
        ]
    )


def test_renderer_draws_the_panels_from_a_small_samples_file(tmp_path: Path) -> None:
    samples = Samples(meta={"date": "2026-01-01 00:00 UTC", "git": "abc1234", "seconds": 15, "interval_s": 5})
    for step in range(4):
        samples.add_scrape(
            1_700_000_000 + 5 * step,
            {
                "board": parse_exposition(_board_text(step)),
                "torchserve": parse_exposition(_torchserve_text(step)),
            },
        )
    samples.meta["model"] = {"name": "deeplabv3", "arch": "deeplabv3_mobilenet_v3_large", "untrained": True}
    path = tmp_path / "samples.json"
    save_samples(samples, path)
    loaded = load_samples(path)

    panels = {panel.title: panel for row in dashboard_panels.PANELS for panel in row.panels}
    rate = dict(dashboard_panels.panel_lines(panels["RPC rate by method"], loaded, window_s=5))
    assert rate["GetPost"][1:] == [2.0, 2.0, 2.0]
    errors = dict(dashboard_panels.panel_lines(panels["Errors by code (non-OK)"], loaded, window_s=5))
    assert errors["NOT_FOUND"][1:] == [0.2, 0.2, 0.2]
    p50 = dict(dashboard_panels.panel_lines(panels["Latency p50 by method"], loaded, window_s=5))
    assert p50["GetPost"][1] == pytest.approx(0.001)
    backlog = dict(dashboard_panels.panel_lines(panels["Tagging backlog"], loaded, window_s=5))
    assert backlog["queue"] == [3, 2, 1, 0]

    picture = tmp_path / "dashboard.png"
    dashboard_render.render(loaded, picture, window_s=5)
    with Image.open(picture) as image:
        assert image.format == "PNG"
        assert image.width > 1000 and image.height > 1000
