"""OpenTelemetry traces across the board and TorchServe: the upload's RPC span, then tagging's span tree
(claim, the TorchServe call as a gRPC client span whose context travels in the call's metadata, store) in the
same trace, joined through the traceparent stored with the attachment; a call over Connect has its server
span too, in the caller's trace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import TorchServe
from tests.e2e.tracing_probe import CONNECT_TRACEPARENT
from tests.support import REPO_ROOT

PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"


def probe(serve: TorchServe, tmp_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    command = [
        sys.executable, "-m", "tests.e2e.tracing_probe",
        "--target", serve.grpc_target,
        "--key-file", str(serve.settings.inference_key_file),
        "--database-url", f"sqlite:///{tmp_path / 'traced.db'}",
        "--audit-log", str(tmp_path / "audit.log"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    first, *rest = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return first, rest


Traced = tuple[dict[str, Any], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def traced(torchserve: TorchServe, tmp_path_factory: pytest.TempPathFactory) -> Traced:
    """One probe run: its outcome and its spans."""
    torchserve.start()  # if an earlier test left it stopped
    return probe(torchserve, tmp_path_factory.mktemp("traced"))


def test_tagging_joins_the_uploads_trace_with_claim_call_and_store(traced: Traced) -> None:
    outcome, spans = traced
    assert outcome["status"] == "ATTACHMENT_STATUS_TAGGED", outcome
    by_id = {span["span_id"]: span for span in spans}

    uploads = [
        s for s in spans if s["name"] == "/board.v1.BoardService/AddAttachment" and s["kind"] == "SERVER"
    ]
    assert len(uploads) == 1, [s["name"] for s in spans]
    upload = uploads[0]
    tags = [s for s in spans if s["name"] == "tag attachment"]
    assert len(tags) == 1
    tag = tags[0]
    # The tagging ran on a worker thread, later, from the traceparent stored in the database; it is a child
    # of the upload's server span, in the same trace.
    assert tag["trace_id"] == upload["trace_id"] and tag["parent_id"] == upload["span_id"]
    assert tag["attributes"]["attachment.id"] == str(outcome["attachment"])

    children = {s["name"]: s for s in spans if s["parent_id"] == tag["span_id"]}
    assert {"claim", PREDICTIONS, "store"} <= set(children), sorted(children)
    call = children[PREDICTIONS]
    assert call["kind"] == "CLIENT" and call["trace_id"] == upload["trace_id"]
    assert all(by_id[s["parent_id"]]["trace_id"] == s["trace_id"] for s in spans if s["parent_id"] in by_id)


def test_a_call_over_connect_has_a_server_span_in_the_callers_trace(traced: Traced) -> None:
    _, spans = traced
    over_connect = [s for s in spans if s["name"] == "/board.v1.BoardService/GetAttachment"]
    assert len(over_connect) == 1, [s["name"] for s in spans]
    span = over_connect[0]
    _, trace_id, parent_id, _ = CONNECT_TRACEPARENT.split("-")
    assert (span["kind"], span["trace_id"], span["parent_id"]) == ("SERVER", trace_id, parent_id)
    assert span["attributes"]["rpc.system"] == "connect"
