"""Faults injected into real processes while the board tags attachments through real TorchServe.

- TorchServe's Python worker killed (kill -9) with a request in flight: retried, tagged, never "too large";
- TorchServe stopped (mid-request too) for longer than the attempt limit would last, then started again (new
  keys): everything uploaded meanwhile is tagged, without using up attempts;
- a board replica killed (kill -9) while it holds a lease: another replica finishes the work once it expires;
- TorchServe keys that expire every 30 s, renewed by the launcher's renewer: tagging keeps working across
  expiry and rotation without a board restart, and `launch stop` stops the renewer.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from clients.board import BoardClient
from clients.gen.board.v1 import board_pb2
from clients.segment import SegmentClient, ServingEndpoints, TokenSource
from seg_handler import launcher as launch
from seg_handler.launcher import keys
from tests.board.conftest import RunningServer
from tests.e2e.conftest import TorchServe, private_serve_settings, start_tagging_board
from tests.e2e.test_attachments_e2e import new_post, photo
from tests.support import Processes, wait_for

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

# TorchServe's token_expiration_min is a number of minutes, fractions allowed: keys that live 30 s are renewed
# every 15 s, so three renewals take 45 s instead of 90 s. Not shorter: the launcher waits for the model with
# the management key and starts the renewer only then, so the first key must outlive a slow start.
KEY_LIFETIME_S = 30

TAGGED = board_pb2.ATTACHMENT_STATUS_TAGGED


def management(serve: TorchServe) -> SegmentClient:
    settings = serve.settings
    endpoints = ServingEndpoints.local(
        settings.host, settings.inference_port, settings.management_port, settings.grpc_inference_port
    )
    return SegmentClient(endpoints, TokenSource.from_key_file(settings.key_file), timeout_s=30)


def rows(database: Path) -> dict[int, Any]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.row_factory = sqlite3.Row
        return {r["id"]: r for r in db.execute("SELECT * FROM attachments")}


def in_flight(database: Path, ids: list[int], claimed_by: set[int] | None = None) -> int | None:
    """An attachment of ``ids`` that is claimed right now (by a process of ``claimed_by``, when given)."""
    for attachment_id, row in rows(database).items():
        if attachment_id not in ids or row["claim_token"] is None or row["status"] != "PENDING":
            continue
        pid = int(str(row["claimed_by"]).split(":")[1])
        if claimed_by is None or pid in claimed_by:
            return attachment_id
    return None


def process_group(pgid: int) -> set[int]:
    """The pids of process group ``pgid`` (a board server and the processes it started)."""
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if (
                entry.name.isdigit()
                and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid
            ):
                found.add(int(entry.name))
    return found


def tagged(client: BoardClient, ids: list[int], timeout: float = 120) -> list[board_pb2.Attachment]:
    done = [client.wait_for_tagging(i, timeout=timeout) for i in ids]
    assert [a.status for a in done] == [TAGGED] * len(ids), [a.failure_reason for a in done]
    return done


def test_a_worker_killed_mid_request_is_retried_and_tagged(
    running_torchserve: TorchServe, processes: Processes, tmp_path: Path
) -> None:
    database = tmp_path / "board.db"
    board = start_tagging_board(processes, running_torchserve, f"sqlite:///{database}", tmp_path, workers=1)
    with board.client() as client, management(running_torchserve) as torchserve:
        post_id = new_post(client, "worker-kill")
        # Large photos keep the worker busy for seconds (full-size mask, PNG), so a kill lands mid-request.
        ids = [client.upload_attachment(post_id, f"{i}.jpg", photo(3000, 2000, seed=i)).id for i in range(3)]
        victims: list[int] = []
        for _ in ids:  # a try whose request finished before the kill is repeated on the next attachment
            wait_for("a call in flight", lambda: in_flight(database, ids) not in (None, *victims), timeout=60)
            victim = in_flight(database, ids)
            assert victim is not None
            victims.append(victim)
            time.sleep(0.5)  # from the claim into the handler
            (worker_pid,) = torchserve.worker_pids()
            os.kill(worker_pid, signal.SIGKILL)
            dead, ended = [worker_pid], victim
            wait_for("the worker restarted", lambda: torchserve.worker_pids() not in ([], dead), 60)  # noqa: B023
            wait_for("the call ended", lambda: rows(database)[ended]["claim_token"] is None, 60)  # noqa: B023
            if "worker died during the call" in board.log():
                break
        done = tagged(client, ids)
    log = board.log()
    assert "worker died during the call" in log, "no kill landed mid-request"
    # Not read as "too large" (the status 413 as a word: ports and ids in the log may hold the digits).
    assert "too_large" not in log and not re.search(r"\b413\b", log)
    hit = [a for a in done if a.id in victims and a.attempts >= 2]
    assert hit, [(a.id, a.attempts) for a in done]


def test_uploads_during_a_torchserve_outage_are_tagged_when_it_returns(
    torchserve: TorchServe, processes: Processes, tmp_path: Path
) -> None:
    database = tmp_path / "board.db"
    torchserve.start()
    board = start_tagging_board(
        processes, torchserve, f"sqlite:///{database}", tmp_path, workers=1, max_attempts=2
    )
    with board.client() as client:
        post_id = new_post(client, "outage")
        busy = client.upload_attachment(post_id, "big.jpg", photo(3000, 2000, seed=21)).id
        wait_for("the big photo in flight", lambda: in_flight(database, [busy]) == busy, 60)
        torchserve.stop()  # mid-request
        waiting = [
            client.add_attachment(post_id, f"{i}.png", photo(60, 40, seed=i, fmt="PNG")).id for i in range(3)
        ]
        # Many more failed calls than the attempt limit (2), and nothing FAILED or counted meanwhile.
        wait_for("five paused calls", lambda: board.log().count("tagging paused") >= 5, 120)
        during = rows(database)
        assert all(during[i]["status"] == "PENDING" for i in [busy, *waiting])
        assert all(during[i]["attempts"] <= 1 for i in waiting), [during[i]["attempts"] for i in waiting]
        torchserve.start()  # the same ports, new keys in inference.key: no board restart
        done = tagged(client, [busy, *waiting])
    assert [a.attempts for a in done[1:]] == [1, 1, 1]
    assert done[0].attempts <= 2


def test_a_replica_killed_while_it_holds_a_lease_is_finished_by_another(
    running_torchserve: TorchServe, processes: Processes, tmp_path: Path
) -> None:
    database = tmp_path / "board.db"
    url = f"sqlite:///{database}"
    options: dict[str, Any] = {"lease_s": 15, "timeout_s": 10, "workers": 1}
    first = start_tagging_board(processes, running_torchserve, url, tmp_path / "first", **options)
    with first.client() as client:
        post_id = new_post(client, "replica-kill")
        ids = [client.upload_attachment(post_id, f"{i}.jpg", photo(2000, 1500, seed=i)).id for i in range(4)]
    held: list[int] = []

    def first_holds_a_lease() -> bool:
        found = in_flight(database, ids, claimed_by=process_group(first.proc.pid))
        if found is not None:
            held.append(found)
        return found is not None

    wait_for("the first replica holding a lease", first_holds_a_lease, 60)
    processes.stop(first.proc, sig=signal.SIGKILL)  # the whole replica, at once
    victim = held[-1]
    assert rows(database)[victim]["claim_token"] is not None, "the lease ended before the kill"
    second = start_tagging_board(processes, running_torchserve, url, tmp_path / "second", **options)
    with second.client() as client:
        done = {a.id: a for a in tagged(client, ids)}
    assert done[victim].attempts >= 2
    assert f"attachment {victim}: the previous lease expired without an outcome; taking over" in second.log()
    assert f"attachment {victim} TAGGED" in second.log()


def _rest_status(settings: launch.ServeSettings, key: str) -> int:
    url = f"{settings.inference_url}/predictions/{settings.model_name}"
    data = photo(20, 10, fmt="PNG")
    return requests.post(url, data=data, headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code


def test_tagging_keeps_working_across_key_expiry_and_rotation(
    e2e_model_store: Path, processes: Processes, tmp_path: Path
) -> None:
    lifetime = ("token_expiration_min", f"{KEY_LIFETIME_S / 60:g}")
    settings = private_serve_settings(e2e_model_store, tmp_path / "torchserve", lifetime)
    serve = TorchServe(settings)
    serve.start()
    try:
        renewer = launch.start_renewer(settings)  # what `make serve` (launch start) runs beside TorchServe
        board: RunningServer = start_tagging_board(
            processes, serve, f"sqlite:///{tmp_path / 'b.db'}", tmp_path
        )
        first_key = settings.inference_key_file.read_text().strip()
        seen = {first_key}
        with board.client() as client:
            # An upload tagged every tenth of a lifetime until the key was renewed three times (at half
            # lifetimes); a new post every ten uploads, below the attachments a post may hold.
            deadline = time.monotonic() + 8 * KEY_LIFETIME_S
            ids: list[int] = []
            while len(seen) < 4 and time.monotonic() < deadline:
                if len(ids) % 10 == 0:
                    post_id = new_post(client, f"keys-{len(ids)}")
                added = client.add_attachment(post_id, "k.png", photo(40, 30, seed=len(ids), fmt="PNG"))
                ids.append(added.id)
                assert client.wait_for_tagging(added.id, timeout=60).status == TAGGED
                seen.add(settings.inference_key_file.read_text().strip())
                time.sleep(KEY_LIFETIME_S / 10)
            done = tagged(client, ids)
        assert len(seen) >= 4, "the inference key was not renewed every half lifetime"
        assert all(a.attempts == 1 for a in done), [a.attempts for a in done]
        assert _rest_status(settings, first_key) == 400  # the first key expired long ago
        assert _rest_status(settings, settings.inference_key_file.read_text().strip()) == 200
        assert oct(settings.inference_key_file.stat().st_mode & 0o777) == oct(0o600)
        assert keys.is_renewer(renewer)
    finally:
        launch.stop(settings)  # `make stop`: the renewer first, then TorchServe
    assert not keys.is_renewer(renewer)
    assert not settings.inference_key_file.exists() and not settings.renewer_pid_file.exists()
