"""ListPosts' filter and order_by through gRPC, on a real board server over SQLite and over PostgreSQL: the
answers, the INVALID_ARGUMENT a caller reads (position and what was expected; the model's classes for an
unknown label), page tokens bound to the query, the older label / min_label_fraction fields combined with a
filter, and the view with attachments.

No TorchServe here: photos are uploaded through the server (they stay PENDING, the server has no
segmentation target) and then marked TAGGED by writing their labels, provenance and mask straight into the
database (``tag_directly``: attachment_labels rows and the attachments row, as the tagger's finish_tagged
stores them). Every query is scoped to the test's own user (``user_id = N``), because the shared server's
database holds other tests' posts too.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import grpc
import pytest
from PIL import Image
from sqlalchemy import Connection, Table, insert, update

from board_server.storage.engine import open_database
from board_server.storage.tables import Attachment, AttachmentLabel
from clients.board import BoardClient, InvalidArgumentError
from clients.gen.board.v1 import board_pb2
from seg_handler.image_policy import VOC_CLASSES
from tests.board.conftest import Member, RunningServer

ATTACHMENTS, LABELS = (cast(Table, m.__table__) for m in (Attachment, AttachmentLabel))
ARCH = "deeplabv3_resnet101"
ARCHIVE_SHA256 = "5" * 64
TAGGED = board_pb2.ATTACHMENT_STATUS_TAGGED
PENDING = board_pb2.ATTACHMENT_STATUS_PENDING


def photo_bytes(width: int = 48, height: int = 32, colour: tuple[int, int, int] = (90, 140, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def tag_directly(
    database_url: str,
    attachment_id: int,
    labels: Mapping[str, float],
    *,
    mask_png: bytes = b"",
    arch: str = ARCH,
    archive_sha256: str = ARCHIVE_SHA256,
) -> None:
    """Mark the attachment TAGGED with ``labels`` (name → fraction), the model's identity and ``mask_png``
    in one transaction, as the tagger's finish_tagged does (no TorchServe in these tests)."""
    db = open_database(database_url)
    try:

        def write(conn: Connection) -> None:
            post_id = conn.execute(
                update(ATTACHMENTS)
                .where(ATTACHMENTS.c.id == attachment_id)
                .values(
                    status="TAGGED",
                    mask_png=mask_png or None,
                    model_arch=arch,
                    model_weights="COCO_WITH_VOC_LABELS_V1",
                    model_untrained=False,
                    model_archive_sha256=archive_sha256,
                    update_time=datetime.now(UTC),
                )
                .returning(ATTACHMENTS.c.post_id)
            ).scalar_one()
            if labels:
                conn.execute(
                    insert(LABELS),
                    [
                        {"attachment_id": attachment_id, "post_id": post_id, "name": name,
                         "fraction": fraction, "pixels": round(fraction * 1000)}
                        for name, fraction in labels.items()
                    ],
                )  # fmt: skip

        db.write(write)
    finally:
        db.dispose()


@dataclass
class Gallery:
    """One user's posts; ``posts[name]`` is a post id, ``photos[name]`` its attachment ids."""

    member: Member
    posts: dict[str, int]
    photos: dict[str, list[int]]
    other_user_post: int

    @property
    def client(self) -> BoardClient:
        return self.member.client

    def scoped(self, filter_text: str = "") -> str:
        own = f"user_id = {self.member.id}"
        return f"{own} AND ({filter_text})" if filter_text else own

    def ids(self, *names: str) -> list[int]:
        return [self.posts[name] for name in names]

    def names(self, post_ids: list[int]) -> list[str]:
        by_id = {post_id: name for name, post_id in self.posts.items()}
        return [by_id.get(post_id, f"other:{post_id}") for post_id in post_ids]


# name → photos (None: an upload left PENDING)
CONTENT: dict[str, list[dict[str, float] | None]] = {
    "dog_person": [{"dog": 0.3, "person": 0.5, "background": 0.2}],
    "cat_and_a_bit_of_dog": [{"cat": 0.6, "background": 0.4}, {"dog": 0.05, "background": 0.95}],
    "person_car": [{"person": 0.4, "car": 0.2, "background": 0.4}],
    "no_photos": [],
    "pending": [None],
    "big_dog": [{"dog": 0.7, "car": 0.1, "background": 0.2}],
}


@pytest.fixture(scope="module")
def gallery(board_server: RunningServer) -> Iterator[Gallery]:
    """The posts of CONTENT by one user, and a stranger's dog post; read-only for the tests that use it."""
    member, stranger = board_server.sign_up("Searcher"), board_server.sign_up("Stranger")
    try:
        posts: dict[str, int] = {}
        photos: dict[str, list[int]] = {}
        for name, content in CONTENT.items():
            posts[name] = member.client.create_post(member.id, name, "photos").id
            photos[name] = []
            for labels in content:
                added = member.client.add_attachment(posts[name], f"{name}.jpg", photo_bytes())
                photos[name].append(added.id)
                if labels is not None:
                    tag_directly(board_server.database_url, added.id, labels)
        other = stranger.client.create_post(stranger.id, "not theirs", "a dog").id
        added = stranger.client.add_attachment(other, "dog.jpg", photo_bytes())
        tag_directly(board_server.database_url, added.id, {"dog": 0.9, "background": 0.1})
        yield Gallery(member, posts, photos, other)
    finally:
        member.client.close()
        stranger.client.close()


def listed(client: BoardClient, filter_text: str, order_by: str = "", page_size: int = 2) -> list[int]:
    return [p.id for p in client.iter_posts(page_size=page_size, filter=filter_text, order_by=order_by)]


def violation_of(caught: pytest.ExceptionInfo[InvalidArgumentError]) -> tuple[str, str]:
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = caught.value.violations
    return violation.field, violation.description


# --- answers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filter_text", "names"),
    [
        ("", ["dog_person", "cat_and_a_bit_of_dog", "person_car", "no_photos", "pending", "big_dog"]),
        ("label.dog >= 0.2", ["dog_person", "big_dog"]),
        ("label.dog", ["dog_person", "cat_and_a_bit_of_dog", "big_dog"]),
        ('label = "cat"', ["cat_and_a_bit_of_dog"]),
        ("label.person > 0.3 AND NOT label.car", ["dog_person"]),
        ("(label.cat OR label.dog) AND NOT label.person", ["cat_and_a_bit_of_dog", "big_dog"]),
        ("label.dog < 0.1", ["cat_and_a_bit_of_dog", "person_car", "no_photos", "pending"]),
        ("label.car = 0.2", ["person_car"]),
        ("-label.background", ["no_photos", "pending"]),
    ],
)
def test_a_filter_through_grpc_lists_the_matching_posts_once(
    gallery: Gallery, filter_text: str, names: list[str]
) -> None:
    assert gallery.names(listed(gallery.client, gallery.scoped(filter_text))) == names


def test_user_and_time_comparisons_through_grpc(gallery: Gallery) -> None:
    posts = {p.id: p for p in gallery.client.iter_posts(filter=gallery.scoped())}
    middle = posts[gallery.posts["person_car"]].create_time.ToDatetime(tzinfo=UTC)
    stamp = middle.isoformat().replace("+00:00", "Z")
    later = listed(gallery.client, gallery.scoped(f'create_time >= "{stamp}"'))
    assert later == sorted(p.id for p in posts.values() if p.create_time.ToDatetime(tzinfo=UTC) >= middle)
    assert gallery.posts["person_car"] in later and gallery.posts["dog_person"] not in later
    everyone = listed(gallery.client, f"label.dog >= 0.8 AND id >= {gallery.posts['dog_person']}")
    assert gallery.other_user_post in everyone
    assert gallery.other_user_post not in listed(gallery.client, gallery.scoped("label.dog >= 0.8"))


@pytest.mark.parametrize(
    ("order_by", "names"),
    [
        ("label.dog desc", ["big_dog", "dog_person", "cat_and_a_bit_of_dog"]),
        ("label.dog", ["cat_and_a_bit_of_dog", "dog_person", "big_dog"]),
        ("id desc", ["big_dog", "pending", "no_photos", "person_car", "cat_and_a_bit_of_dog", "dog_person"]),
    ],
)
def test_order_by_through_grpc(gallery: Gallery, order_by: str, names: list[str]) -> None:
    assert gallery.names(listed(gallery.client, gallery.scoped(), order_by, page_size=1)) == names


def test_create_time_desc_is_the_reverse_of_the_upload_order(gallery: Gallery) -> None:
    posts = list(gallery.client.iter_posts(filter=gallery.scoped()))
    newest_first = sorted(posts, key=lambda p: (p.create_time.ToDatetime(), p.id), reverse=True)
    assert listed(gallery.client, gallery.scoped(), "create_time desc", 4) == [p.id for p in newest_first]


def test_small_pages_list_every_match_once(gallery: Gallery) -> None:
    query = gallery.scoped("label.background")
    # A label order lists only the posts with that label in some photo.
    for order_by, count in (
        ("", 4),
        ("create_time desc", 4),
        ("label.background desc", 4),
        ("label.person", 2),
    ):
        one_by_one = listed(gallery.client, query, order_by, page_size=1)
        assert one_by_one == listed(gallery.client, query, order_by, page_size=50)
        assert len(one_by_one) == len(set(one_by_one)) == count


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "text", "message"),
    [
        ("filter", "label.dog AND", "column 14: expected a field name, NOT, '-' or '(', found the end"),
        ("filter", "label.dog >= 1.5", "column 14: label.dog compares with a fraction between 0 and 1"),
        ("filter", "(label.dog", "column 11: expected ')', found the end of the text"),
        ("filter", 'title = "x"', "column 1: unknown field 'title'; filterable fields: label"),
        ("filter", 'status = "FAILED"', "column 1: unknown field 'status'"),
        ("order_by", "create_time down", "column 13: expected asc or desc, found 'down'"),
        ("order_by", "title", "column 1: cannot sort by 'title'; use id, create_time or label.<class>"),
    ],
)
def test_an_invalid_query_is_invalid_argument_naming_position_and_expectation(
    gallery: Gallery, field: str, text: str, message: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        gallery.client.list_posts(**{field: text})  # type: ignore[arg-type]
    named, description = violation_of(caught)
    assert named == field
    assert description.startswith(message)


@pytest.mark.parametrize(("field", "text"), [("filter", "label.dgo > 0.2"), ("order_by", "label.dgo desc")])
def test_an_unknown_label_is_invalid_argument_listing_the_model_classes(
    gallery: Gallery, field: str, text: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        gallery.client.list_posts(**{field: text})  # type: ignore[arg-type]
    named, description = violation_of(caught)
    assert named == field
    assert "unknown label 'dgo' (did you mean 'dog'?)" in description
    assert description.endswith("the model's classes are: " + ", ".join(VOC_CLASSES))


# --- page tokens --------------------------------------------------------------------------------------------


def test_a_page_token_only_continues_the_query_it_came_from(gallery: Gallery) -> None:
    client, query = gallery.client, gallery.scoped("label.dog")
    first = client.list_posts(page_size=1, filter=query)
    assert first.next_page_token
    # The same query written differently is the same query.
    same = client.list_posts(page_size=1, page_token=first.next_page_token, filter=query.replace("AND", " "))
    assert [p.id for p in same.posts] == gallery.ids("cat_and_a_bit_of_dog")
    for other in (
        {"filter": gallery.scoped("label.cat")},
        {"filter": query, "order_by": "id desc"},
        {"filter": query, "label": "dog"},
        {"filter": ""},
    ):
        with pytest.raises(InvalidArgumentError) as caught:
            client.list_posts(page_size=1, page_token=first.next_page_token, **other)  # type: ignore[arg-type]
        assert violation_of(caught)[0] == "page_token"
    plain = client.list_posts(user_id=gallery.member.id, page_size=1)
    with pytest.raises(InvalidArgumentError) as caught:
        client.list_posts(page_size=1, page_token=plain.next_page_token, filter=query)
    assert violation_of(caught)[0] == "page_token"


# --- the older fields ---------------------------------------------------------------------------------------


def test_the_older_label_fields_still_work_and_combine_with_the_filter(gallery: Gallery) -> None:
    client, me = gallery.client, gallery.member.id

    def older(**fields: object) -> list[str]:
        return gallery.names([p.id for p in client.iter_posts(**fields)])  # type: ignore[arg-type]

    assert older(user_id=me, label="dog") == ["dog_person", "cat_and_a_bit_of_dog", "big_dog"]
    assert older(user_id=me, label="dog", min_label_fraction=0.2) == ["dog_person", "big_dog"]
    assert older(user_id=me, label="dog", filter="NOT label.person") == ["cat_and_a_bit_of_dog", "big_dog"]
    assert older(label="dog", min_label_fraction=0.5, filter=gallery.scoped("label.car")) == ["big_dog"]
    assert older(user_id=me, label="dog", order_by="label.dog desc") == [
        "big_dog",
        "dog_person",
        "cat_and_a_bit_of_dog",
    ]
    # As before: any label text is accepted, a name no model uses finds nothing.
    assert older(user_id=me, label="no-such-class") == []
    with pytest.raises(InvalidArgumentError) as caught:
        client.list_posts(label="dog", min_label_fraction=1.5, filter="label.cat")
    assert violation_of(caught) == ("min_label_fraction", "must be between 0 and 1 (0 means 0.01)")


# --- the view with attachments ------------------------------------------------------------------------------


def test_the_full_view_carries_each_post_s_attachments_with_labels_and_model(gallery: Gallery) -> None:
    page = gallery.client.list_posts(filter=gallery.scoped(), page_size=10, with_attachments=True)
    by_id = {p.id: p for p in page.posts}
    for name, content in CONTENT.items():
        post = by_id[gallery.posts[name]]
        assert [a.id for a in post.attachments] == gallery.photos[name]
        for attachment, labels in zip(post.attachments, content, strict=True):
            assert attachment.post_id == post.id
            if labels is None:
                assert attachment.status == PENDING
                assert not attachment.labels and not attachment.model.arch
                continue
            assert attachment.status == TAGGED
            assert {x.name: x.fraction for x in attachment.labels} == pytest.approx(labels)
            fractions = [x.fraction for x in attachment.labels]
            assert fractions == sorted(fractions, reverse=True)
            assert (attachment.model.arch, attachment.model.archive_sha256) == (ARCH, ARCHIVE_SHA256)
            assert attachment.width == 48 and attachment.height == 32
    basic = gallery.client.list_posts(filter=gallery.scoped(), page_size=10)
    assert [p.id for p in basic.posts] == [p.id for p in page.posts]
    assert all(not p.attachments for p in basic.posts)
