"""A board server's Prometheus metrics as a test reads them: /metrics (its address from the log), a sample."""

from __future__ import annotations

import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.board.conftest import RunningServer

METRICS_URL = re.compile(r"metrics on (http://\S+/metrics)")


def scrape(server: RunningServer) -> str:
    """The text of the server's /metrics (the supervisor's sum over its processes)."""
    found = METRICS_URL.search(server.log())
    assert found, f"no metrics address in the log:\n{server.log()}"
    with urllib.request.urlopen(found.group(1), timeout=10) as response:
        return str(response.read().decode())


def sample(server: RunningServer, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels`` (0 when there is none)."""
    return sum(
        float(s.value)
        for family in text_string_to_metric_families(scrape(server))
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )
