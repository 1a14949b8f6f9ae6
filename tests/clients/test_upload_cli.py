"""`board attach` uploads with UploadAttachment, in chunks, up to the server's attachment limit, against a
real board server that tags nothing (the conftest's ``board``): uploads stay PENDING."""

from __future__ import annotations

import json
from pathlib import Path

from tests.board.conftest import Member, RunningServer
from tests.clients.conftest import Cli


def test_attach_uploads_a_photo_near_the_twenty_mib_limit(
    cli: Cli, logged_in: Member, board: RunningServer, photo_near_the_limit_file: Path
) -> None:
    post = logged_in.client.create_post(0, "big", "from the command line")
    ran = cli("--json", "--timeout", "60", "attach", post.id, photo_near_the_limit_file)
    assert ran.code == 0, ran.both
    (shown,) = json.loads(ran.out)["attachments"]
    size = photo_near_the_limit_file.stat().st_size
    assert (shown["filename"], shown["size_bytes"]) == ("near-the-limit.png", str(size))
    with board.client(timeout=60) as reader:
        assert reader.get_attachment_content(int(shown["id"])).data == photo_near_the_limit_file.read_bytes()
