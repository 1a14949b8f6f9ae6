"""The preview cache bounds what previews cost, through real servers on SQLite and PostgreSQL:

- only the sizes of the ladder are kept; every answer is scaled down from the next kept size and is never
  larger than asked (nor than the photo);
- beyond ``--preview-cache-bytes`` the least recently used previews are evicted as a new one is stored;
- the anonymous sweep of the issue (one 1600×1200 photo, every size 16..2048 in steps of 7, JPEG and WebP:
  582 requests) grows the database by at most 40 MiB;
- renders take turns per client address (``RenderSlots``, in-process).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from PIL import Image
from sqlalchemy import Engine, Table, select, text, update

from board_server.domain.preview_cache import RenderSlots
from board_server.domain.previews import LADDER, MAX_MAX_SIZE, MIN_MAX_SIZE, render_preview
from board_server.storage.tables import AttachmentPreview
from clients.board import BoardClient
from tests.board.conftest import Backend, Member, RunningServer, database_engine, start_board_server
from tests.support import Processes

PREVIEWS = cast(Table, AttachmentPreview.__table__)
MIB = 1024 * 1024


def photo(size: tuple[int, int], seed: int = 0) -> bytes:
    """A photo-like JPEG: colour gradients under grain (1600×1200 weighs ~430 KB, as a phone's photo would
    at that size, not like a flat colour); ``seed`` makes each one different."""
    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blue = red.rotate(90).resize(size).point(lambda v: (v + seed * 37) % 256)
    grain = Image.merge("RGB", [Image.effect_noise(size, 40) for _ in range(3)])
    image = Image.blend(Image.merge("RGB", (red, green, blue)), grain, 0.25)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def upload(member: Member, data: bytes) -> int:
    post_id = member.client.create_post(0, "previews", "of a photo").id
    return member.client.add_attachment(post_id, "photo.jpg", data).id


def kept(engine: Engine, attachment_id: int | None = None) -> list[tuple[int, int, str]]:
    """(attachment id, size, format) of every kept preview (of one attachment), in order."""
    query = select(PREVIEWS.c.attachment_id, PREVIEWS.c.max_size, PREVIEWS.c.content_type)
    if attachment_id is not None:
        query = query.where(PREVIEWS.c.attachment_id == attachment_id)
    with engine.connect() as conn:
        return sorted((int(a), int(s), str(k)) for a, s, k in conn.execute(query))


@pytest.fixture
def uploader(board_server: RunningServer) -> Iterator[Member]:
    member = board_server.sign_up("Photographer")
    yield member
    member.client.close()


def test_only_sizes_of_the_ladder_are_kept_and_no_answer_is_larger_than_asked(
    board_server: RunningServer, uploader: Member
) -> None:
    attachment_id = upload(uploader, photo((600, 400)))
    with BoardClient(board_server.target) as anonymous:
        for asked in (16, 100, 120, 128, 300, 500, 512, 513, 600, 1000, 1024, 2048):
            for kind in ("image/jpeg", "image/webp"):
                answer = anonymous.get_attachment_preview(attachment_id, max_size=asked, content_type=kind)
                assert max(answer.width, answer.height) == min(asked, 600), (asked, kind)
                image = Image.open(io.BytesIO(answer.data))
                assert image.size == (answer.width, answer.height) and answer.content_type == kind
    with database_engine(board_server.database_url) as engine:
        sizes = {size for _, size, _ in kept(engine, attachment_id)}
    # 16..128 from 64 and 128, 300..512 from 512, above that the photo's own 600 px (never enlarged).
    assert sizes == {64, 128, 512, 600}
    assert sizes - {600} <= set(LADDER)


def test_beyond_the_budget_the_least_recently_used_previews_are_evicted(
    backend: Backend, processes: Processes
) -> None:
    image = photo((600, 400))
    one = len(render_preview(image, None, 512, "image/jpeg", ()).data)  # what each preview here weighs
    server = start_board_server(
        processes,
        backend.new_database_url(),
        backend.workdir,
        extra=("--preview-cache-bytes", str(3 * one + one // 2)),  # room for three
    )
    owner = server.sign_up("Owner")
    with owner.client, database_engine(server.database_url) as engine:
        a, b, c, d = (upload(owner, image) for _ in range(4))
        for attachment_id in (a, b, c):
            assert len(owner.client.get_attachment_preview(attachment_id, max_size=512).data) == one
        assert [row[0] for row in kept(engine)] == [a, b, c]
        # Last used: c, b, a a while ago; then a is read again (its use is recorded) and d is rendered.
        long_ago = datetime.now(UTC) - timedelta(minutes=10)
        with engine.begin() as conn:
            for minutes, attachment_id in enumerate((a, b, c)):
                conn.execute(
                    update(PREVIEWS)
                    .where(PREVIEWS.c.attachment_id == attachment_id)
                    .values(last_use_time=long_ago + timedelta(minutes=minutes))
                )
        owner.client.get_attachment_preview(a, max_size=512)
        owner.client.get_attachment_preview(d, max_size=512)
        assert [row[0] for row in kept(engine)] == [a, c, d]  # b was the least recently used
        # A preview larger than the whole budget is served, and not kept.
        large = upload(owner, photo((1600, 1200)))
        answer = owner.client.get_attachment_preview(large, max_size=2048)
        assert answer.width == 1600 and len(answer.data) > 3 * one + one // 2
        assert [row[0] for row in kept(engine)] == [a, c, d]


def database_bytes(engine: Engine, sqlite_file: Path | None) -> int:
    """What the database takes on disk: the SQLite file with its write-ahead log, or PostgreSQL's
    pg_database_size (tables, TOAST and indexes)."""
    if sqlite_file is not None:
        return sum(p.stat().st_size for p in (sqlite_file, Path(f"{sqlite_file}-wal")) if p.exists())
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())


@pytest.mark.slow
def test_an_anonymous_sweep_over_every_size_grows_the_database_by_at_most_40_mib(
    backend: Backend, processes: Processes, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_board_server(processes, backend.new_database_url(), backend.workdir)
    owner = server.sign_up("Owner")
    with owner.client:
        attachment_id = upload(owner, photo((1600, 1200)))
    sqlite_file = Path(server.database_url.removeprefix("sqlite:///")) if backend.name == "sqlite" else None
    sizes = range(MIN_MAX_SIZE, MAX_MAX_SIZE + 1, 21)  # at least 3 sizes between any two rungs of the ladder
    with database_engine(server.database_url) as engine, BoardClient(server.target, timeout=60) as anonymous:
        before = database_bytes(engine, sqlite_file)
        started = time.monotonic()
        for size in sizes:
            for kind in ("image/jpeg", "image/webp"):
                answer = anonymous.get_attachment_preview(attachment_id, max_size=size, content_type=kind)
                assert max(answer.width, answer.height) == min(size, 1600)
        seconds = time.monotonic() - started
        grown = database_bytes(engine, sqlite_file) - before
        rows = kept(engine)
        with engine.connect() as conn:
            table_bytes = conn.execute(select(PREVIEWS.c.size_bytes)).scalars().all()
    with capsys.disabled():
        print(  # a figure for the record
            f"\n[preview sweep, {backend.name}] {2 * len(sizes)} requests in {seconds:.0f} s; the database "
            f"grew {grown / MIB:.1f} MiB; {len(rows)} previews kept, {sum(table_bytes) / MIB:.1f} MiB"
        )
    assert 2 * len(sizes) == 194
    assert grown <= 40 * MIB
    assert len(rows) <= 2 * len(LADDER)


def test_one_address_renders_at_most_its_share_and_leaves_the_others_their_turns() -> None:
    async def scenario() -> None:
        slots = RenderSlots(total=4, per_peer=2)
        release = asyncio.Event()
        running: dict[str, int] = {"attacker": 0, "other": 0}
        most = dict(running)

        async def render(peer: str) -> None:
            async with slots.turn(peer):
                running[peer] += 1
                most[peer] = max(most[peer], running[peer])
                await release.wait()
                running[peer] -= 1

        flood = [asyncio.create_task(render("attacker")) for _ in range(10)]
        await asyncio.sleep(0.05)
        assert running["attacker"] == 2  # the other eight wait for the attacker's own turns
        other = asyncio.create_task(render("other"))
        await asyncio.sleep(0.05)
        assert running["other"] == 1  # served at once, while the attacker's renders still wait
        release.set()
        await asyncio.gather(*flood, other)
        assert most == {"attacker": 2, "other": 1}
        assert slots.addresses == 0  # nothing kept for addresses without a render

    asyncio.run(scenario())
