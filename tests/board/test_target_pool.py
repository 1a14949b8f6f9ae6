"""Several model servers behind one backend: round-robin, a dead server skipped without costing the call, keys
per server, dns:/// resolved again. Fake servers in the test process; the real ones are in
tests/e2e/test_several_model_servers.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from board_server.core.records import ModelIdentity, ServedModel, TagResult
from board_server.tagging.targets import EJECT_BASE_S, TargetClient, TargetPool
from clients.segment import SegmentAuthError, SegmentError, SegmentRejectedError, SegmentUnavailableError

IDENTITY = ModelIdentity("arch", "random", None, "a" * 64, True)


class FakeServer:
    """One model server: answers, or raises ``failure`` while it is set."""

    def __init__(self, address: str, key_file: Path | None) -> None:
        self.address = address
        self.key_file = key_file
        self.failure: SegmentError | None = None
        self.calls = 0
        self.closed = False

    def segment(self, image: bytes) -> TagResult:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return TagResult((("dog", 1.0, 4),), b"png", IDENTITY)

    def describe(self) -> ServedModel:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return ServedModel(IDENTITY)

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Servers:
    """The fake servers a pool connected to, by address."""

    def __init__(self) -> None:
        self.by_address: dict[str, FakeServer] = {}
        self.connected: list[FakeServer] = []

    def connect(self, address: str, key_file: Path | None) -> TargetClient:
        server = FakeServer(address, key_file)
        self.by_address[address] = server
        self.connected.append(server)
        return server


def pool(
    spec: str, servers: Servers, clock: Clock, keys: tuple[Path, ...] = (), **kwargs: object
) -> TargetPool:
    return TargetPool(spec, servers.connect, keys, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_calls_go_round_robin_and_each_answer_names_its_server() -> None:
    servers, clock = Servers(), Clock()
    backend = pool("127.0.0.1:7070,127.0.0.1:7071", servers, clock)

    answered = Counter(backend.segment(b"img").server for _ in range(40))

    assert answered == {"127.0.0.1:7070": 20, "127.0.0.1:7071": 20}


def test_an_unreachable_server_is_skipped_and_the_same_call_answered_by_the_next() -> None:
    servers, clock = Servers(), Clock()
    backend = pool("a:1,b:2", servers, clock)
    servers.by_address["a:1"].failure = SegmentUnavailableError("a:1: connection refused")

    answers = [backend.segment(b"img").server for _ in range(10)]

    assert answers == ["b:2"] * 10  # no call failed
    assert servers.by_address["a:1"].calls == 1  # tried once, then ejected for the backoff


def test_an_ejected_server_is_tried_again_after_its_backoff_and_rejoins_when_it_answers() -> None:
    servers, clock = Servers(), Clock()
    backend = pool("a:1,b:2", servers, clock)
    dead = servers.by_address["a:1"]
    dead.failure = SegmentUnavailableError("a:1: connection refused")
    backend.segment(b"img")

    clock.now += EJECT_BASE_S + 0.01  # the backoff is over: the next round tries it (still dead)
    assert {backend.segment(b"img").server for _ in range(4)} == {"b:2"}
    assert dead.calls == 2

    clock.now += 2 * EJECT_BASE_S + 0.01  # the doubled backoff; now it answers again
    dead.failure = None
    assert Counter(backend.segment(b"img").server for _ in range(10)) == {"a:1": 5, "b:2": 5}


def test_a_server_refusing_our_key_is_skipped_like_a_dead_one() -> None:
    servers, clock = Servers(), Clock()
    backend = pool("a:1,b:2", servers, clock)
    servers.by_address["b:2"].failure = SegmentAuthError("token refused")

    assert {backend.segment(b"img").server for _ in range(6)} == {"a:1"}


@pytest.mark.parametrize(
    "failure",
    [
        SegmentRejectedError(400, "corrupt", "bad image"),
        SegmentUnavailableError("failed on it", reached=True),
    ],
)
def test_a_failure_on_the_image_is_not_sent_to_another_server(failure: SegmentError) -> None:
    servers, clock = Servers(), Clock()
    backend = pool("a:1,b:2", servers, clock)
    for server in servers.connected:
        server.failure = failure

    with pytest.raises(type(failure)) as raised:
        backend.segment(b"img")

    assert sum(s.calls for s in servers.connected) == 1
    assert raised.value.target in ("a:1", "b:2")


def test_when_every_server_is_down_the_last_failure_reaches_the_caller() -> None:
    servers, clock = Servers(), Clock()
    backend = pool("a:1,b:2", servers, clock)
    for server in servers.connected:
        server.failure = SegmentUnavailableError(f"{server.address}: connection refused")

    with pytest.raises(SegmentUnavailableError) as raised:
        backend.segment(b"img")
    assert not raised.value.reached
    # Ejected, still tried: with every server down a call tries each once (the worker then pauses).
    with pytest.raises(SegmentUnavailableError):
        backend.describe()
    assert [s.calls for s in servers.connected] == [2, 2]


def test_each_listed_server_gets_its_own_key_file_in_order_or_all_share_one(tmp_path: Path) -> None:
    servers = Servers()
    pool("a:1,b:2", servers, Clock(), (tmp_path / "a.key", tmp_path / "b.key"))
    assert [(s.address, s.key_file) for s in servers.connected] == [
        ("a:1", tmp_path / "a.key"),
        ("b:2", tmp_path / "b.key"),
    ]

    shared = Servers()
    pool("a:1,b:2", shared, Clock(), (tmp_path / "one.key",))
    assert {s.key_file for s in shared.connected} == {tmp_path / "one.key"}


def test_a_dns_target_follows_what_the_name_resolves_to() -> None:
    servers, clock = Servers(), Clock()
    answers = {"ts.svc": ["10.0.0.5:7070", "10.0.0.6:7070"]}
    backend = pool(
        "dns:///ts.svc:7070", servers, clock, resolve=lambda host, port: answers[host], resolve_every_s=30.0
    )

    assert Counter(backend.segment(b"img").server for _ in range(4)) == {
        "10.0.0.5:7070": 2,
        "10.0.0.6:7070": 2,
    }

    answers["ts.svc"] = ["10.0.0.6:7070", "10.0.0.7:7070"]  # one pod replaced
    clock.now += 31
    assert Counter(backend.segment(b"img").server for _ in range(4)) == {
        "10.0.0.6:7070": 2,
        "10.0.0.7:7070": 2,
    }
    assert servers.by_address["10.0.0.5:7070"].closed
    assert backend.addresses == ("10.0.0.6:7070", "10.0.0.7:7070")


def test_a_name_that_resolves_to_nothing_is_unavailable_not_an_error_of_the_image() -> None:
    def unresolvable(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    backend = pool("dns:///nowhere.invalid:7070", Servers(), Clock(), resolve=unresolvable)

    with pytest.raises(SegmentUnavailableError, match="resolves to no server"):
        backend.segment(b"img")


def test_close_closes_every_server() -> None:
    servers = Servers()
    backend = pool("a:1,b:2", servers, Clock())
    backend.close()
    assert all(s.closed for s in servers.connected)
