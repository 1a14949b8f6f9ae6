"""Search benchmark: ListPosts' filter and order queries (board_server/query/post_search.py) on 100,000 tagged
attachments, on SQLite and on PostgreSQL, against a floor measured in the same run (a plain page of 50 posts
by id, no filter); each twice: directly on the database, and through a real board server's ListPosts over
gRPC (one client, one server process on the seeded database, reads as an anonymous caller).

The seed is realistic rather than uniform: ~30,000 posts of 1,000 users, 1–5 photos each (100,000 in all),
2–4 of the 20 non-background VOC classes per photo drawn with Zipf-like class weights (person, car, chair
common; sheep, cow, aeroplane rare), each covering a skewed (Beta(0.7, 5)) share of the photo, plus the
background row the tagger stores for the rest. Each cell pages through the first pages of a query (the next
page's cursor from the last) and reports the p50 and p90 of a single page's latency; each run repeats that,
and the cell keeps every run's figures (``summarize``). Target: p50 < 50 ms for a page of 50 (issue 13:
the two-label filter page), on both backends, directly and through gRPC; ``targets`` in the results says
which were met.

    python -m bench.search [--runs 3] [--pages 20] [--postgres-url URL] [--no-postgres] [--no-grpc]

The SQLite database is kept in var/bench/search.db (--sqlite-path): a rerun finds the seed there and only
measures. The PostgreSQL leg uses --postgres-url (or BOARD_BENCH_POSTGRES_URL; a database holding another
seed is emptied and seeded again) or starts a throw-away cluster (bench/postgres.py) as bench/board.py does.
The label index the queries use (ix_attachment_labels_post_name_fraction) comes with the migrations (0004).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Table, insert, text

from bench.postgres import benchmark_database
from bench.records import ROOT, load_average, summarize, write_results
from bench.servers import board_executable, clean_env, limit_flags, limits_record, running
from board_server.core.emails import canonical_email
from board_server.query.filter import OrderBy, parse_filter, parse_order_by
from board_server.query.post_search import Cursor, search_posts
from board_server.storage.engine import Database, migrate, open_database
from board_server.storage.tables import Attachment, AttachmentLabel, Base, Post, User
from clients.board import BoardClient
from seg_handler.image_policy import VOC_CLASSES

logger = logging.getLogger("bench.search")

# Zipf-like popularity of the 20 object classes in photos people post (person first, sheep last).
_POPULARITY = (
    "person", "car", "chair", "dog", "cat", "bottle", "tvmonitor", "diningtable", "sofa", "pottedplant",
    "bicycle", "bird", "motorbike", "bus", "horse", "boat", "train", "aeroplane", "cow", "sheep",
)  # fmt: skip
INDEX = "ix_attachment_labels_post_name_fraction (post_id, name, fraction, attachment_id), migration 0004"
TARGET_MS = 50.0
PAGE = 50
MAX_PAGE = 1000  # ListPosts' largest page: deep cells reach their first row in pages of this size
TARGET_CELL = "two labels, by id"  # issue 13's figure: a two-label filter page of 50 posts
SQLITE_PATH = ROOT / "var" / "bench" / "search.db"
# (cell name, filter, order_by, rows skipped before the first timed page); the floor comes first. The deep
# cells start mid-list: a keyset page must cost the same at row 1,500 as at row 1.
CELLS: tuple[tuple[str, str, str, int], ...] = (
    ("floor: page by id, no filter", "", "", 0),
    ("two labels, by id", "label.person > 0.1 AND label.dog", "", 0),
    ("two labels, by id, from row 1500", "label.person > 0.1 AND label.dog", "", 1500),
    ("two labels, create_time desc", "label.person > 0.1 AND label.dog", "create_time desc", 0),
    (
        "two labels, create_time desc, from row 1500",
        "label.person > 0.1 AND label.dog",
        "create_time desc",
        1500,
    ),
    ("label.dog desc, no filter", "", "label.dog desc", 0),
    ("label.dog desc, one label", "label.person", "label.dog desc", 0),
    ("one label OR another, NOT a third, by id", "(label.cat OR label.dog) AND NOT label.car", "", 0),
)

_TABLES = [cast(Table, m.__table__) for m in (User, Post, Attachment, AttachmentLabel)]


def seed(db: Database, posts: int, attachments: int, rng: random.Random) -> dict[str, int]:
    """Insert users, posts, TAGGED attachments and their labels with Core inserts; return the row counts."""
    users_table, posts_table, attachments_table, labels_table = _TABLES
    start = datetime(2025, 1, 1, tzinfo=UTC)
    photos = _photo_counts(posts, attachments, rng)
    weights = [1.0 / (rank + 1) for rank in range(len(_POPULARITY))]
    counts = {"users": 1000, "posts": posts, "attachments": 0, "labels": 0}
    post_rows: list[dict[str, Any]] = [
        {
            "user_id": rng.randint(1, 1000),
            "title": f"post {i}",
            "content": "seeded",
            # 1.5 minutes apart, truncated to whole minutes: posts share create_times (the id breaks ties).
            "create_time": start + timedelta(minutes=i * 15 // 10),
            "update_time": start,
        }
        for i in range(1, posts + 1)
    ]
    attachment_rows, label_rows = [], []
    for post_id, count in enumerate(photos, start=1):
        for _ in range(count):
            attachment_rows.append(_attachment(post_id, post_rows[post_id - 1]["create_time"]))
            label_rows += _labels(len(attachment_rows), post_id, rng, weights)

    def write(conn: Connection) -> None:
        conn.execute(
            insert(users_table),
            [
                {"name": f"u{i}", "email": e, "email_canonical": canonical_email(e), "create_time": start}
                for i, e in enumerate((f"u{i}@example.org" for i in range(1, 1001)), 1)
            ],
        )
        _insert_chunks(conn, posts_table, post_rows)
        _insert_chunks(conn, attachments_table, attachment_rows)
        _insert_chunks(conn, labels_table, label_rows)

    db.write(write)
    with db.engine.connect() as conn:
        # Statistics, and on PostgreSQL the visibility map that index-only scans need: the steady state
        # autovacuum reaches on a live board, not the state just after a bulk load.
        analyze = "VACUUM ANALYZE" if conn.dialect.name == "postgresql" else "ANALYZE"
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(analyze)
    counts.update(attachments=len(attachment_rows), labels=len(label_rows))
    return counts


def _photo_counts(posts: int, attachments: int, rng: random.Random) -> list[int]:
    """1–5 photos per post, adjusted at random so that they add up to ``attachments``."""
    counts = [rng.randint(1, 5) for _ in range(posts)]
    total = sum(counts)
    while total != attachments:
        i = rng.randrange(posts)
        step = 1 if total < attachments else -1
        if 1 <= counts[i] + step <= 5:
            counts[i] += step
            total += step
    return counts


def _attachment(post_id: int, created: datetime) -> dict[str, Any]:
    return {
        "post_id": post_id,
        "filename": "photo.jpg",
        "content_type": "image/jpeg",
        "size_bytes": 0,
        "width": 640,
        "height": 480,
        "data": b"",
        "status": "TAGGED",
        "attempts": 1,
        "next_attempt_time": created,
        "create_time": created,
        "update_time": created,
        "model_arch": "deeplabv3_resnet101",
    }


def _labels(
    attachment_id: int, post_id: int, rng: random.Random, weights: list[float]
) -> list[dict[str, Any]]:
    names: set[str] = set()
    wanted = rng.randint(2, 4)
    while len(names) < wanted:
        names.add(rng.choices(_POPULARITY, weights)[0])
    shares = {name: rng.betavariate(0.7, 5.0) for name in sorted(names)}
    scale = min(1.0, 0.95 / sum(shares.values()))
    pixels = 640 * 480
    rows: list[dict[str, Any]] = []
    for name, share in shares.items():
        fraction = max(round(share * scale, 6), 1e-6)
        rows.append({"attachment_id": attachment_id, "name": name, "post_id": post_id, "fraction": fraction})
    rows.append(
        {
            "attachment_id": attachment_id,
            "name": "background",
            "post_id": post_id,
            "fraction": round(1.0 - sum(r["fraction"] for r in rows), 6),
        }
    )
    for row in rows:
        row["pixels"] = round(row["fraction"] * pixels)
    return rows


def _insert_chunks(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], size: int = 5000) -> None:
    for i in range(0, len(rows), size):
        conn.execute(insert(table), list(rows[i : i + size]))


# --- measuring ----------------------------------------------------------------------------------------------


def time_pages(db: Database, filter_text: str, order_text: str, pages: int, skip: int = 0) -> list[float]:
    """Milliseconds of each of ``pages`` pages, each after the previous one's cursor, the first after
    ``skip`` rows (read untimed in one query)."""
    where = parse_filter(filter_text, VOC_CLASSES)
    order: OrderBy = parse_order_by(order_text, VOC_CLASSES)
    start: Cursor | None = None
    if skip:
        with db.read() as conn:
            start = search_posts(conn, where, order, None, skip).next_cursor
    cursor, timings = start, []
    for _ in range(pages):
        began = time.perf_counter()
        with db.read() as conn:  # a connection per page, as ListPosts gets one per call
            page = search_posts(conn, where, order, cursor, PAGE)
        timings.append((time.perf_counter() - began) * 1000)
        cursor = page.next_cursor or start  # after the last page: start again
    return timings


# Times ``pages`` pages of one cell: (filter, order_by, pages, rows skipped first) -> milliseconds each.
PageTimer = Callable[[str, str, int, int], list[float]]


def time_rpc_pages(
    client: BoardClient, filter_text: str, order_text: str, pages: int, skip: int = 0
) -> list[float]:
    """``time_pages`` through ListPosts: milliseconds of each call for a page of 50, each with the previous
    page's token, the first after ``skip`` rows (read untimed in pages of up to 1000)."""
    start, skipped = "", 0
    while skipped < skip:
        size = min(MAX_PAGE, skip - skipped)
        skipping = client.list_posts(
            page_size=size, page_token=start, filter=filter_text, order_by=order_text
        )
        start, skipped = skipping.next_page_token, skipped + size
    token, timings = start, []
    for _ in range(pages):
        began = time.perf_counter()
        page = client.list_posts(page_size=PAGE, page_token=token, filter=filter_text, order_by=order_text)
        timings.append((time.perf_counter() - began) * 1000)
        token = page.next_page_token or start  # after the last page: start again
    return timings


def run_backend(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Seed (unless the database holds the seed already), then time every cell directly and, unless
    ``--no-grpc``, through a board server on the same database."""
    db = open_database(url)
    try:
        ensure_seeded(name, db, args)
        figures: dict[str, Any] = {"backend": name}
        figures["cells"] = measure_cells(
            f"{name} direct", lambda *cell: time_pages(db, *cell), args.runs, args.pages
        )
    finally:
        db.dispose()
    if not args.no_grpc:
        with tempfile.TemporaryDirectory(prefix="board-bench-search-server-") as work:
            figures["grpc"] = {
                "server": "board-server --processes 1 (defaults otherwise), one BoardClient, anonymous reads",
                "limits": limits_record(flags=["--processes", "1"]),
                "cells": _measure_grpc(name, url, Path(work), args),
            }
    return figures


def ensure_seeded(name: str, db: Database, args: argparse.Namespace) -> None:
    """Migrate; seed unless the database already holds this many posts and attachments."""
    migrate(db.engine)
    with db.read() as conn:
        posts = conn.execute(text("SELECT count(*) FROM posts")).scalar_one()
        existing = conn.execute(text("SELECT count(*) FROM attachments")).scalar_one()
    if (posts, existing) == (args.posts, args.attachments):
        logger.info("%s: the seed is there already (%d posts, %d attachments)", name, posts, existing)
        return
    db.write(_drop_rows)
    began = time.perf_counter()
    counts = seed(db, args.posts, args.attachments, random.Random(args.seed))
    logger.info("%s: seeded %s in %.1f s", name, counts, time.perf_counter() - began)


def _measure_grpc(name: str, url: str, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    command = [
        str(board_executable()), "--address", "127.0.0.1:0", "--database-url", url, "--processes", "1",
        "--http-address", "none",
        "--metrics-address", "none", "--audit-log", str(work / "audit.log"), "--grace", "2", *limit_flags(),
    ]  # fmt: skip
    with running(f"board-{name}", command, work, clean_env()) as server:
        with BoardClient(server.target, timeout=60) as client:
            cells = measure_cells(
                f"{name} gRPC", lambda *cell: time_rpc_pages(client, *cell), args.runs, args.pages
            )
        server.check_alive()
    return cells


def measure_cells(name: str, timer: PageTimer, runs: int, pages: int) -> list[dict[str, Any]]:
    """Every cell of CELLS, ``runs`` times ``pages`` pages after 3 warm-up pages; p50/p90 of each run, the
    ratio of each cell's median p50 to the floor's, and whether it meets the target."""
    cells: list[dict[str, Any]] = []
    for cell, filter_text, order_text, skip in CELLS:
        timer(filter_text, order_text, 3, skip)  # warm caches and the statement cache
        p50s, p90s = [], []
        for _ in range(runs):
            timings = timer(filter_text, order_text, pages, skip)
            p50s.append(round(statistics.median(timings), 3))
            p90s.append(round(statistics.quantiles(timings, n=10)[-1], 3))
        cells.append(
            {
                "cell": cell,
                "filter": filter_text,
                "order_by": order_text,
                "skipped_rows": skip,
                "page_size": PAGE,
                "pages_per_run": pages,
                "p50_ms": summarize(p50s),
                "p90_ms": summarize(p90s),
            }
        )
        logger.info("%s  %-46s p50 %7.2f ms  p90 %7.2f ms", name, cell, statistics.median(p50s), max(p90s))
    floor = cells[0]["p50_ms"]["median"]
    for figures in cells:
        figures["ratio_to_floor"] = round(figures["p50_ms"]["median"] / floor, 2) if floor else None
        figures["meets_target"] = figures["p50_ms"]["median"] < TARGET_MS
    return cells


def targets(backends: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 13's target per backend and path: the two-label page's median p50 under 50 ms."""
    rows = []
    for backend in backends:
        paths = [("direct", backend["cells"])]
        if "grpc" in backend:
            paths.append(("gRPC ListPosts", backend["grpc"]["cells"]))
        for path, cells in paths:
            [cell] = [c for c in cells if c["cell"] == TARGET_CELL]
            rows.append(
                {
                    "target": f"{backend['backend']} {path}: {TARGET_CELL} p50 < {TARGET_MS:g} ms",
                    "value": cell["p50_ms"]["median"],
                    "met": cell["meets_target"],
                }
            )
    return rows


def _drop_rows(conn: Connection) -> None:
    for table in reversed(Base.metadata.sorted_tables):
        conn.execute(table.delete())


@contextlib.contextmanager
def _postgres(args: argparse.Namespace) -> Iterator[str | None]:
    url = args.postgres_url or os.environ.get("BOARD_BENCH_POSTGRES_URL")
    if url:
        yield url
        return
    with benchmark_database() as made:
        yield made


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--posts", type=int, default=30_000)
    parser.add_argument("--attachments", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3, help="repeats of every cell")
    parser.add_argument("--pages", type=int, default=20, help="pages timed per run (page size 50)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--postgres-url", default="", help="else BOARD_BENCH_POSTGRES_URL, else a fresh cluster"
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-grpc", action="store_true", help="only the direct leg (no board server)")
    parser.add_argument(
        "--sqlite-path",
        type=Path,
        default=SQLITE_PATH,
        help="kept between runs (default var/bench/search.db)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default bench/results/search.json)"
    )
    return parser


def main(args: argparse.Namespace) -> None:
    load_before = load_average()
    backends, skipped = [], []
    args.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    backends.append(run_backend("sqlite", f"sqlite:///{args.sqlite_path.resolve()}", args))
    if args.no_postgres:
        skipped.append("postgresql: --no-postgres")
    else:
        with _postgres(args) as url:
            if url is None:
                skipped.append("postgresql: no initdb (apt-get install postgresql) and no URL given")
            else:
                backends.append(run_backend("postgresql", url, args))
    met = targets(backends)
    payload = {
        "target_p50_ms": TARGET_MS,
        "seed": {"posts": args.posts, "attachments": args.attachments, "seed": args.seed},
        "index": INDEX,
        "backends": backends,
        "targets": met,
        "skipped": skipped,
    }
    path = write_results("search", payload, load_before=load_before, out=args.out)
    for row in met:
        logger.info("%s: %.2f ms, %s", row["target"], row["value"], "met" if row["met"] else "NOT met")
    logger.info("load average before %s, after %s; results in %s", load_before, load_average(), path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(get_args_parser().parse_args())
