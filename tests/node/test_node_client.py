"""The Node.js client (clients/node) against real board servers with accounts on: `node --test`, the flow
script, an upload near the 20 MiB limit and TLS by default off loopback. For the suite and the flow the board
tags uploads through the session TorchServe (tests/torchserve_fixtures.py: an archive from training.export
behind the real handler), so the flow's WatchAttachment sees PENDING become TAGGED and its overlay preview
has a mask; a second server serves TLS with a test CA (trustme) for the TLS test. A server armed with the
test-only fault point shows that the client's retry policy and request_ids make a create whose answer was
lost happen once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.board.conftest import RunningServer, non_loopback_address, sign_up, start_board_server
from tests.clients.conftest import AUTH_ON, start_tls_board
from tests.support import REPO_ROOT, Processes
from tests.torchserve_fixtures import TorchServe, start_tagging_board

NODE_DIR = REPO_ROOT / "clients" / "node"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


def _tagging_server(processes: Processes, workdir: Path, serve: TorchServe) -> RunningServer:
    return start_tagging_board(processes, serve, f"sqlite:///{workdir / 'board.db'}", workdir, extra=AUTH_ON)


def _node(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("clients/node/node_modules missing: run `make node` (make test does)")
    return subprocess.run(
        ["node", *args],
        cwd=NODE_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_node_test_suite_passes_against_real_servers(
    processes: Processes, tmp_path: Path, running_torchserve: TorchServe
) -> None:
    server = _tagging_server(processes, tmp_path / "plain", running_torchserve)
    tls, ca_file = start_tls_board(processes, tmp_path / "tls")
    result = _node(
        ["--test", "test/"],
        {
            "BOARD_TARGET": server.target,
            "BOARD_TLS_TARGET": f"localhost:{tls.port}",
            "BOARD_CA_FILE": str(ca_file),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^# pass 7$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^# skipped 0$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^# todo 0$", result.stdout, re.MULTILINE), result.stdout


def test_node_flow_script_signs_up_watches_previews_and_filters(
    processes: Processes, tmp_path: Path, running_torchserve: TorchServe
) -> None:
    server = _tagging_server(processes, tmp_path, running_torchserve)
    preview = tmp_path / "preview.jpg"
    result = _node(["flow.js", "--target", server.target, "--preview", str(preview)], {})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^user   #1 Grace <grace-\S+@example\.org>$", out, re.MULTILINE), out
    assert re.search(r"^signed in until \d{4}-\d\d-\d\dT", out, re.MULTILINE), out
    assert re.search(r'^post   #1 "Hello from Node\.js" by user #1$', out, re.MULTILINE), out
    assert "listed 1 post(s) of user #1" in out
    assert re.search(r"^watch  #1 (PENDING -> )*TAGGED$", out, re.MULTILINE), out
    with server.client() as client:
        attachment = client.get_attachment(1)
    labels = ", ".join(f"{x.name} {100 * x.fraction:.1f}%" for x in attachment.labels)
    meta = running_torchserve.archive_metadata
    model = f"{meta['arch']}@{str(meta['archive_sha256'])[:12]}"  # the served archive's identity
    assert labels and f"attach #1 tiny.png 4x3 TAGGED: {labels} (model {model})" in out, out
    assert re.search(
        rf"^preview 4x3 image/jpeg \(\d+ bytes\) saved to {re.escape(str(preview))}$", out, re.M
    ), out
    assert 'filter "user_id = 1" order "create_time desc": 1 post(s): #1 (1 attachment(s))' in out
    with Image.open(preview) as image:
        assert image.format == "JPEG" and image.size == (4, 3)
    # The server saw the same data: read it back with the Python client.
    with server.client() as client:
        post = client.get_post(1)
        assert post.title == "Hello from Node.js" and post.user_id == 1
        assert client.get_attachment(1).status == 2  # TAGGED
    assert "password" not in out.lower() and "token" not in out.lower()


# A client call from Node, printed as JSON: the attachment an upload made, or the error's status code.
NODE_CALL = """
const fs = require('node:fs');
const { BoardClient } = require('./board_client');
const env = process.env;
const client = new BoardClient(env.TARGET, {
  token: env.TOKEN || null, timeoutMs: 20000, plaintext: env.PLAINTEXT === '1',
});
const call = env.FILE
  ? client.upload(env.POST_ID, 'big.png', fs.readFileSync(env.FILE))
  : client.call('ListPosts', {});
call.then(
  (answer) => console.log(JSON.stringify({ ok: true, size_bytes: answer.size_bytes, id: answer.id })),
  (err) => console.log(JSON.stringify({ ok: false, code: err.code, message: err.message })),
).finally(() => client.close());
"""


def _node_call(env: dict[str, str]) -> dict[str, object]:
    result = _node(["-e", NODE_CALL], env)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_the_node_client_uploads_a_photo_near_the_limit_in_chunks(
    processes: Processes, tmp_path: Path, photo_near_the_limit_file: Path
) -> None:
    server = start_board_server(processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path, extra=AUTH_ON)
    member = sign_up(server.target, "Node uploader")
    with member.client as client:
        post = client.create_post(0, "big", "from Node")
        answer = _node_call(
            {"TARGET": server.target, "TOKEN": client.token or "", "POST_ID": str(post.id),
             "FILE": str(photo_near_the_limit_file)}
        )  # fmt: skip
        assert answer["ok"], answer
        assert answer["size_bytes"] == str(photo_near_the_limit_file.stat().st_size)
        content = client.get_attachment_content(int(str(answer["id"])), timeout=60)
        assert content.data == photo_near_the_limit_file.read_bytes()


def test_the_node_client_speaks_tls_off_loopback_unless_told_plaintext(
    processes: Processes, tmp_path: Path
) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve on")
    flags = ("--address", "0.0.0.0:0", "--allow-plaintext")  # a plaintext board on every address
    server = start_board_server(processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path, extra=flags)
    remote = f"{address}:{server.port}"
    refused = _node_call({"TARGET": remote})  # TLS by default: no conversation with a plaintext server
    assert refused == {"ok": False, "code": 14, "message": refused["message"]}, refused
    assert _node_call({"TARGET": remote, "PLAINTEXT": "1"})["ok"]
    assert _node_call({"TARGET": f"127.0.0.1:{server.port}"})["ok"]  # loopback: plaintext by default


RETRIED_CREATE = """
const { BoardClient } = require('./board_client');
(async () => {
  const client = new BoardClient(process.env.BOARD_TARGET);
  const email = `node-retry-${process.pid}@example.org`;
  await client.call('CreateUser', { name: 'Node', email, password: 'correct horse battery' });
  await client.signIn(email, 'correct horse battery');
  const post = await client.call('CreatePost', { title: 'once from Node', content: 'its answer was lost' });
  const listed = await client.call('ListPosts', { user_id: post.user_id });
  console.log(JSON.stringify({ post: post.id, listed: listed.posts.map((p) => p.id) }));
  client.close();
})().catch((err) => { console.error(err.message); process.exit(1); });
"""


def test_node_client_retries_a_create_whose_answer_was_lost(processes: Processes, tmp_path: Path) -> None:
    once = tmp_path / "fault-fired"
    server = start_board_server(
        processes,
        f"sqlite:///{tmp_path / 'board.db'}",
        tmp_path,
        extra=AUTH_ON,
        server_processes=2,
        env={"BOARD_TEST_FAULT": f"exit-after-commit:CreatePost:{once}"},
    )
    result = _node(["-e", RETRIED_CREATE], {"BOARD_TARGET": server.target})
    assert result.returncode == 0, result.stdout + result.stderr
    assert once.exists(), "the process did not die after the COMMIT"
    answer = json.loads(result.stdout)
    assert answer["listed"] == [answer["post"]]  # the retry got the committed post; no second one
