"""`board` writes that are safe to repeat and conditional: ``--request-id`` on creates (the same id twice: one
post), ``--if-match ETAG`` on updates and deletes (a stale etag: ABORTED, exit 1, nothing changed, a hint),
and the etag in tables and JSON, against a real server."""

from __future__ import annotations

import json
import uuid

from tests.board.conftest import Member
from tests.clients.conftest import Cli


def test_posts_create_with_one_request_id_twice_makes_one_post(cli: Cli, logged_in: Member) -> None:
    request_id = str(uuid.uuid4())
    runs = [
        cli("--json", "posts", "create", "--title", "T", "--content", "C", "--request-id", request_id)
        for _ in range(2)
    ]
    assert [r.code for r in runs] == [0, 0], [r.both for r in runs]
    first, second = (json.loads(r.out) for r in runs)
    assert first == second
    listed = json.loads(cli("--json", "posts", "list", "--user", logged_in.id).out)
    assert [p["id"] for p in listed["posts"]] == [first["id"]]
    malformed = cli("--json", "posts", "create", "--title", "T", "--content", "C", "--request-id", "nope")
    assert malformed.code == 1
    assert json.loads(malformed.err)["error"]["field_violations"][0]["field"] == "request_id"


def test_posts_update_and_delete_if_match_apply_only_to_the_version_read(cli: Cli, logged_in: Member) -> None:
    post = json.loads(cli("--json", "posts", "create", "--title", "v1", "--content", "C").out)
    shown = cli("posts", "get", post["id"])
    assert post["etag"] and post["etag"] in shown.out  # tables show the etag to pass back

    updated = cli("--json", "posts", "update", post["id"], "--title", "v2", "--if-match", post["etag"])
    assert updated.code == 0, updated.both
    new_etag = json.loads(updated.out)["etag"]
    assert new_etag != post["etag"]

    stale = cli("posts", "update", post["id"], "--title", "v3", "--if-match", post["etag"])
    assert stale.code == 1
    assert "ABORTED" in stale.err and f"board posts get {post['id']}" in stale.err
    stale_delete = cli("--json", "posts", "delete", post["id"], "--if-match", post["etag"])
    assert stale_delete.code == 1
    assert json.loads(stale_delete.err)["error"]["code"] == "ABORTED"
    assert json.loads(cli("--json", "posts", "get", post["id"]).out)["title"] == "v2"

    deleted = cli("posts", "delete", post["id"], "--if-match", new_etag)
    assert deleted.code == 0, deleted.both
    assert cli("posts", "get", post["id"]).code == 1


def test_comments_and_users_take_if_match_too(cli: Cli, logged_in: Member) -> None:
    post = json.loads(cli("--json", "posts", "create", "--title", "p", "--content", "c").out)
    comment = json.loads(cli("--json", "comments", "create", "--post", post["id"], "--content", "c1").out)
    stale = cli("comments", "update", comment["id"], "--content", "c2", "--if-match", "stale")
    assert stale.code == 1 and "ABORTED" in stale.err
    fresh = cli("comments", "update", comment["id"], "--content", "c2", "--if-match", comment["etag"])
    assert fresh.code == 0, fresh.both
    me = json.loads(cli("--json", "users", "get", logged_in.id).out)
    renamed = cli("--json", "users", "update", logged_in.id, "--name", "Ada L.", "--if-match", me["etag"])
    assert renamed.code == 0, renamed.both
    assert cli("users", "update", logged_in.id, "--name", "Ada", "--if-match", me["etag"]).code == 1
