"""Scrape the board's and TorchServe's metrics under load, save the samples, draw the dashboard (issue 12.4).

While it scrapes both /metrics endpoints every few seconds, a modest load goes through the board: users
signed up and in, posts, comments, reads, now and then a photo (the generated scenes of `board demo`)
watched over WatchAttachment until it is tagged, two albums that queue up the tagger, a few refused calls.
The samples go to docs/dashboard/samples.json and the picture, the same panels as the Grafana dashboard
docs/dashboard/board.json (see bench.dashboard_render), to docs/dashboard/dashboard.png. With `make run`
running in another terminal:

    python -m bench.dashboard --seconds 240          # board 127.0.0.1:50051, metrics :9464 and :8082
    python -m bench.dashboard --render-only          # redraw the picture from the saved samples
    python -m bench.dashboard --write-grafana        # rewrite board.json from bench.dashboard_panels

Each run signs up ``--users`` readers (3) from 127.0.0.1: more than 10 within an hour reach the board's
sign-up limit, so for repeated runs raise it for `make run` (``BOARD_SIGN_UPS_PER_PEER=1000 make run``).

TorchServe 0.12 adds to ts_inference_latency_microseconds and ts_queue_latency_microseconds only for REST
predictions, and counts only REST answers in Requests2XX/4XX/5XX; the board calls it over gRPC. Its latency
panel therefore shows the PredictionTime and QueueTime gauges (set for every prediction) instead of a mean
from those counters, which would divide REST time by all requests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import random
import secrets
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.dashboard_render import GRAFANA_JSON, PICTURE, render, write_grafana
from bench.dashboard_samples import (
    SAMPLES_JSON,
    Samples,
    Scraped,
    load_samples,
    parse_exposition,
    save_samples,
)
from clients.board import BoardClient, BoardClientError

logger = logging.getLogger("bench.dashboard")

ROOT = Path(__file__).resolve().parent.parent


# --- the load ----------------------------------------------------------------------------------------------


def demo_photos() -> list[tuple[str, bytes]]:
    """The generated scenes of `board demo` (320x240 JPEG)."""
    from clients.attachment_cli import _demo_images

    return list(_demo_images(None, 5))


@dataclass
class LoadStats:
    users: int
    calls: Counter[str] = field(default_factory=Counter)
    photos: int = 0
    tagged: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, code: str) -> None:
        with self.lock:
            self.calls[code] += 1

    def summary(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "calls": sum(self.calls.values()),
            "codes": dict(self.calls),
            "photos": self.photos,
            "tagged": self.tagged,
        }


@dataclass
class _User:
    """One load user's state: its signed-in client, its own posts, its open watches."""

    client: BoardClient
    rng: random.Random
    posts: list[int] = field(default_factory=list)
    watches: list[Future[None]] = field(default_factory=list)


class LoadDriver:
    """Board users at a modest pace: reads most, writes some, a photo now and then (two albums at once), a
    few refused calls; every photo is watched over WatchAttachment until it is tagged."""

    def __init__(self, target: str, users: int, stop: threading.Event, seconds: float) -> None:
        self.target, self.stop, self.seconds = target, stop, seconds
        self.stats = LoadStats(users)
        self.photos = demo_photos()
        self.posts: list[int] = []  # everyone's, for reads and comments
        self.watchers = ThreadPoolExecutor(max_workers=64, thread_name_prefix="watch")
        self.anonymous = BoardClient(target, timeout=30.0)

    def run(self) -> None:
        """Until ``stop`` is set, then until every photo is tagged (or its watch times out)."""
        threads = [threading.Thread(target=self._user, args=(i,)) for i in range(self.stats.users)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.watchers.shutdown(wait=True)
        self.anonymous.close()

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except BoardClientError as exc:
            self.stats.count(exc.code.name)
            return None
        self.stats.count("OK")
        return result

    def _user(self, index: int) -> None:
        password = secrets.token_urlsafe(18)
        email = f"dash-{time.strftime('%H%M%S')}-{secrets.token_hex(3)}@example.org"
        with BoardClient(self.target, timeout=30.0) as client:
            user = _User(client, random.Random(index))
            if self._call(lambda: client.create_user(f"Reader {index + 1}", email, password)) is None or (
                self._call(lambda: client.sign_in(email, password)) is None
            ):
                logger.error("user %d could not sign up and in; it sits this run out", index)
                return
            started = time.monotonic()
            albums = [self.seconds * 0.15, self.seconds * 0.5] if index == 0 else []
            while not self.stop.is_set():
                if albums and time.monotonic() - started >= albums[0]:
                    albums.pop(0)
                    self._album(user)
                self._act(user)
                self.stop.wait(user.rng.expovariate(1 / 0.5))
            wait(user.watches)  # the client stays open for its watches
            self._call(client.sign_out)

    def _act(self, user: _User) -> None:
        roll, client = user.rng.random(), user.client
        post = user.rng.choice(self.posts) if self.posts else 0
        if roll < 0.10 or not user.posts:
            self._new_post(user, "Weekend", "Photos from the lake")
        elif roll < 0.40:
            self._call(lambda: client.get_post(post))
        elif roll < 0.60:
            self._call(lambda: client.list_posts(page_size=20))
        elif roll < 0.70:
            self._call(lambda: client.create_comment(post, 0, "Lovely light"))
        elif roll < 0.80:
            self._call(lambda: client.list_comments(post, page_size=20))
        elif roll < 0.88:
            self._call(lambda: client.list_attachments_page(post, page_size=10))
        elif roll < 0.89:
            self._photo(user, user.rng.choice(user.posts))
        elif roll < 0.94:
            self._call(lambda: client.get_attachment(user.rng.randint(1, 50)))
        else:
            self._refused(user)

    def _new_post(self, user: _User, title: str, content: str) -> int | None:
        made = self._call(lambda: user.client.create_post(0, title, content))
        if made is None:
            return None
        user.posts.append(int(made.id))
        self.posts.append(int(made.id))
        return int(made.id)

    def _photo(self, user: _User, post: int) -> None:
        name, data = user.rng.choice(self.photos)
        added = self._call(lambda: user.client.add_attachment(post, name, data))
        if added is not None:
            with self.stats.lock:
                self.stats.photos += 1
            user.watches.append(self.watchers.submit(self._watch, user.client, int(added.id)))

    def _album(self, user: _User) -> None:
        post = self._new_post(user, "Album", "Six photos at once")
        for _ in range(6 if post else 0):
            self._photo(user, post or 0)

    def _watch(self, client: BoardClient, attachment_id: int) -> None:
        try:
            done = client.wait_for_tagging(attachment_id, timeout=max(60.0, self.seconds))
        except (TimeoutError, BoardClientError) as exc:
            logger.warning("attachment %d: %s", attachment_id, exc)
            return
        with self.stats.lock:
            if done.HasField("model") and done.model.arch:
                self.stats.tagged += 1
                model = done.model
                self.stats.model = {
                    "arch": model.arch,
                    "weights": model.weights,
                    "untrained": model.untrained,
                    "archive_sha256": model.archive_sha256[:12],
                }

    def _refused(self, user: _User) -> None:
        """Callers' mistakes, so the error panel has something to show."""
        mistake, client = user.rng.randrange(3), user.client
        if mistake == 0:
            self._call(lambda: client.get_post(10**12))  # NOT_FOUND
        elif mistake == 1:
            self._call(lambda: client.create_post(0, "", "no title"))  # INVALID_ARGUMENT
        else:
            self._call(lambda: self.anonymous.create_post(0, "Hi", "not signed in"))  # UNAUTHENTICATED


# --- the run ---------------------------------------------------------------------------------------------


def scrape(url: str, timeout: float = 5.0) -> Scraped | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a URL we were given)
            return parse_exposition(response.read().decode())
    except OSError as exc:
        logger.warning("scrape of %s failed: %s", url, exc)
        return None


def git_sha() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def run(args: argparse.Namespace) -> Samples:
    sources = {"board": args.board_metrics, "torchserve": args.torchserve_metrics}
    samples = Samples(
        meta={
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "git": git_sha(),
            "seconds": args.seconds,
            "interval_s": args.interval,
            "sources": sources,
        }
    )
    stop = threading.Event()
    driver = LoadDriver(args.board_target, args.users, stop, args.seconds)

    def scrape_all() -> None:
        samples.add_scrape(time.time(), {name: scrape(url) for name, url in sources.items()})
        calls = sum(driver.stats.calls.values())
        print(f"\r{len(samples.times)} scrapes, {calls} calls", end="", flush=True)

    scrape_all()
    load = threading.Thread(target=driver.run, name="load")
    load.start()
    began = time.monotonic()
    try:
        # On a fixed cadence, however long a scrape takes (the board counts its database at every scrape).
        for tick in range(1, int(args.seconds / args.interval) + 1):
            time.sleep(max(0.0, began + tick * args.interval - time.monotonic()))
            scrape_all()
        stop.set()
        # The photos still queued are tagged and their watchers end: the picture shows the queue emptying.
        while load.is_alive():
            load.join(args.interval)
            scrape_all()
        for _ in range(args.drain_scrapes):
            time.sleep(args.interval)
            scrape_all()
    finally:
        stop.set()
        load.join()
    print()
    model_names = {s.labels.get("model_name", "") for s in samples.select("ts_inference_requests_total")}
    samples.meta["model"] = {"name": ",".join(sorted(model_names)) or "?", **driver.stats.model}
    samples.meta["load"] = driver.stats.summary()
    return samples


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--board-metrics", default="http://127.0.0.1:9464/metrics")
    parser.add_argument("--torchserve-metrics", default="http://127.0.0.1:8082/metrics")
    parser.add_argument("--board-target", default="127.0.0.1:50051", help="HOST:PORT of the board's gRPC")
    parser.add_argument("--seconds", type=float, default=240.0, help="how long to drive load")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between scrapes")
    parser.add_argument("--drain-scrapes", type=int, default=4, help="scrapes once every photo is tagged")
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--window", type=float, default=60.0, help="rate window of the picture, seconds")
    parser.add_argument("--samples", type=Path, default=SAMPLES_JSON)
    parser.add_argument("--png", type=Path, default=PICTURE)
    parser.add_argument("--render-only", action="store_true", help="redraw from --samples, run nothing")
    parser.add_argument("--write-grafana", action="store_true", help=f"write {GRAFANA_JSON.name} and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    if args.write_grafana:
        write_grafana()
        print(f"wrote {GRAFANA_JSON}")
        return 0
    if args.render_only:
        samples = load_samples(args.samples)
    else:
        samples = run(args)
        save_samples(samples, args.samples)
        print(f"samples: {args.samples} ({len(samples.times)} scrapes, {len(samples.series)} series)")
        print(f"load: {json.dumps(samples.meta['load'])}")
    render(samples, args.png, args.window)
    print(f"picture: {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
