"""A model that raises in its forward, served by real TorchServe behind the real handler: TorchServe answers
HTTP 500 / gRPC INTERNAL, and the board reads that as the server's failure, not the image's: it retries with
backoff, the attempts grow, and the attachment ends FAILED only after the attempt limit, with a reason that
names the server's error.

The archive is the session's test archive (training.export, the real handler and image_policy) with its
TorchScript file swapped for a scripted module that raises for every input, and model-meta.json naming the
new file's hash as the served identity.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch
from torch import nn

from clients.gen.board.v1 import board_pb2
from clients.segment import SegmentClient, SegmentServerError, ServingEndpoints, TokenSource
from tests.e2e.conftest import TorchServe, start_tagging_board
from tests.e2e.test_attachments_e2e import new_post, photo
from tests.support import Processes, wait_for
from tests.torchserve_fixtures import torchserve_for

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

FAILED, PENDING = board_pb2.ATTACHMENT_STATUS_FAILED, board_pb2.ATTACHMENT_STATUS_PENDING
MAX_ATTEMPTS = 3
SERVER_ERROR = "model server error INTERNAL: inference_failed: inference failed: "


class FailingModel(nn.Module):
    """Fails every forward, as a model with a bug for every input would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this model fails on purpose")


def failing_archive(good: Path, into: Path) -> Path:
    """``good`` (a .mar) with FailingModel as its TorchScript file, written to ``into``; returns ``into``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; TorchServe still runs it
        scripted = torch.jit.script(FailingModel())
        torch.jit.save(scripted, str(into.with_suffix(".pt")))
    model = into.with_suffix(".pt").read_bytes()
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(into, "w", zipfile.ZIP_DEFLATED) as archive:
        serialized = json.loads(source.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename == serialized:
                data = model
            elif entry.filename == "model-meta.json":
                meta = json.loads(data)
                meta["torchscript_sha256"] = meta["archive_sha256"] = hashlib.sha256(model).hexdigest()
                data = json.dumps(meta).encode()
            archive.writestr(entry, data)
    return into


@pytest.fixture(scope="module")
def failing_torchserve(
    e2e_model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TorchServe]:
    """A TorchServe of its own serving the failing archive (the session's serves the working one)."""
    store = tmp_path_factory.mktemp("failing_model_store")
    failing_archive(e2e_model_store / "deeplabv3.mar", store / "deeplabv3.mar")
    runtime = tmp_path_factory.mktemp("failing_torchserve")
    serve = torchserve_for(store, runtime, ready_timeout_s=240)
    serve.start()
    yield serve  # the teardown runs whatever the tests did
    serve.stop()


def segment_client(serve: TorchServe) -> SegmentClient:
    settings = serve.settings
    endpoints = ServingEndpoints.local(
        settings.host, settings.inference_port, settings.management_port, settings.grpc_inference_port
    )
    return SegmentClient(endpoints, TokenSource.from_key_file(settings.key_file), timeout_s=60)


def test_torchserve_answers_a_failing_forward_over_grpc_with_internal(failing_torchserve: TorchServe) -> None:
    with segment_client(failing_torchserve) as client:
        workers = client.worker_pids()
        with pytest.raises(SegmentServerError) as failed:
            client.segment(photo(64, 48))  # over gRPC, as the board calls it
        assert failed.value.status == "INTERNAL", failed.value
        assert str(failed.value).startswith("INTERNAL: inference_failed: inference failed: "), failed.value
        assert client.worker_pids() == workers  # the handler answered; its worker lives on
        assert client.describe()["archive_sha256"] == failing_torchserve.archive_metadata["archive_sha256"]


def test_the_board_retries_a_failing_model_and_fails_the_upload_after_the_attempt_limit(
    failing_torchserve: TorchServe, processes: Processes, tmp_path: Path
) -> None:
    board = start_tagging_board(
        processes, failing_torchserve, f"sqlite:///{tmp_path / 'board.db'}", tmp_path,
        max_attempts=MAX_ATTEMPTS, workers=1,
    )  # fmt: skip
    with board.client() as client:
        added = client.add_attachment(new_post(client, "failing-model"), "photo.jpg", photo(64, 48))
        seen = list(client.watch_attachment(added.id, timeout=120))  # every change, until it ends
    # Retried: PENDING while the attempts grow (the stream shows states, so it may skip one), FAILED only
    # at the limit; the log names every failed try.
    attempts = [a.attempts for a in seen]
    assert attempts == sorted(attempts) and any(0 < n < MAX_ATTEMPTS for n in attempts[:-1]), attempts
    assert all(a.status == PENDING for a in seen[:-1]), seen
    done = seen[-1]
    assert done.status == FAILED and done.attempts == MAX_ATTEMPTS, done
    assert done.failure_reason.startswith(
        f"gave up after {MAX_ATTEMPTS} attempts; last error: {SERVER_ERROR}"
    )
    log = board.log()
    for attempt in range(1, MAX_ATTEMPTS):
        assert f"attachment {added.id}: attempt {attempt} of {MAX_ATTEMPTS} failed ({SERVER_ERROR}" in log


def test_torchserve_answers_a_failing_forward_over_rest_with_500_and_its_reason(
    failing_torchserve: TorchServe,
) -> None:
    settings = failing_torchserve.settings
    key = settings.inference_key_file.read_text().strip()
    url = f"{settings.inference_url}/predictions/{settings.model_name}"
    with segment_client(failing_torchserve) as client:
        workers = client.worker_pids()
        try:
            answer = requests.post(
                url, data=photo(64, 48), headers={"Authorization": f"Bearer {key}"}, timeout=60
            )
            assert answer.status_code == 500, answer.text
            assert answer.json()["code"] == "inference_failed", answer.text
            assert client.worker_pids() == workers
        finally:  # a dead worker is restarted by TorchServe: wait, so that no later call meets the gap
            wait_for("a worker", lambda: client.worker_pids() and client.describe(), timeout=120)
