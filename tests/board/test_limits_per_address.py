"""The limits per client address of sign-in and sign-up, through real servers on SQLite and PostgreSQL, with
the limits as shipped: the attackers call from other loopback addresses (127.0.0.2, ... through
tests/board/peers.py), the account owners from 127.0.0.1.

- a stranger's guesses lock only the stranger out: the owner (an admin too) signs in from elsewhere;
- guesses sprayed over many emails from one address stop at ``--sign-in-failures-per-peer``;
- a known and an unknown email get the same answer, in content and in time;
- sign-ups stop at ``--sign-ups-per-peer`` per address, counted in the database that replicas share.

Each test's attacker has an address of its own, so that the tests can share the module's server.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import grpc
import pytest

from board_server.domain.accounts import (
    BAD_CREDENTIALS,
    SIGN_IN_FAILURE_LIMIT,
    SIGN_IN_WINDOW,
    SIGN_UP_WINDOW,
)
from board_server.runtime.config import Settings
from clients.board import BoardClient, BoardClientError, ResourceExhaustedError
from tests.board.conftest import (
    PASSWORD,
    SHIPPED_HASHING,
    Backend,
    RunningServer,
    new_email,
    shipped_limits,
    sign_in,
    sign_up,
    start_board_server,
)
from tests.board.peers import from_address
from tests.support import Processes

DEFAULTS = Settings()
PER_PEER = DEFAULTS.sign_in_failures_per_peer
SIGN_UPS = DEFAULTS.sign_ups_per_peer


def refused(call: Callable[[], object]) -> BoardClientError:
    with pytest.raises(BoardClientError) as caught:
        call()
    return caught.value


def assert_throttled(error: BoardClientError, window_s: float) -> None:
    """RESOURCE_EXHAUSTED with RetryInfo: when to try again, within the limit's window."""
    assert isinstance(error, ResourceExhaustedError), error
    assert error.retry_after is not None and 0 < error.retry_after <= window_s, error.retry_after


@pytest.fixture(scope="module")
def shipped(backend: Backend, module_processes: Processes) -> RunningServer:
    """A server with the sign-in limits as shipped (its many owners sign up from 127.0.0.1, beyond the
    sign-up limit: that one is tested on servers of its own)."""
    flags = ("--sign-in-failures-per-peer", str(PER_PEER))
    return start_board_server(module_processes, backend.new_database_url(), backend.workdir, extra=flags)


@contextmanager
def stranger(server: RunningServer, address: str) -> Iterator[BoardClient]:
    """An anonymous client of ``server`` calling from ``address``."""
    with from_address(server.target, address) as target, BoardClient(target, timeout=30) as client:
        yield client


# --- sign-in -----------------------------------------------------------------------------------------------


def test_a_strangers_guesses_never_lock_the_owner_out_admins_included(shipped: RunningServer) -> None:
    owner, admin = sign_up(shipped.target, "Owner"), shipped.make_admin()
    with stranger(shipped, "127.0.0.2") as guesser:
        for victim in (owner, admin):
            for attempt in range(SIGN_IN_FAILURE_LIMIT):
                error = refused(partial(guesser.sign_in, victim.email, f"guess {attempt}"))
                assert error.code == grpc.StatusCode.UNAUTHENTICATED and error.message == BAD_CREDENTIALS
            # The stranger is stopped, even with the right password: the guesses came from there.
            assert_throttled(refused(partial(guesser.sign_in, victim.email, PASSWORD)), 900)
        # The owners sign in from their own address, and from any other but the stranger's.
        for victim in (owner, admin):
            with sign_in(shipped.target, victim.email) as at_home:
                assert at_home.get_user(0).id == victim.id
            with stranger(shipped, "127.0.0.3") as travelling:
                assert travelling.sign_in(victim.email, PASSWORD).user.id == victim.id
        # Still stopped where the guesses came from.
        assert_throttled(refused(partial(guesser.sign_in, owner.email, PASSWORD)), 900)
    for member in (owner, admin):
        member.client.close()


def test_guesses_sprayed_over_many_emails_stop_at_the_limit_per_address(shipped: RunningServer) -> None:
    bystander = sign_up(shipped.target, "Bystander")
    with stranger(shipped, "127.0.0.4") as sprayer:
        own = sprayer.create_user("Sprayer", new_email("sprayer"), PASSWORD)
        for _ in range(PER_PEER):
            error = refused(partial(sprayer.sign_in, new_email("sprayed"), "a common password"))
            assert error.code == grpc.StatusCode.UNAUTHENTICATED
        for email, password in [(new_email("sprayed"), "a common password"), (own.email, PASSWORD)]:
            error = refused(partial(sprayer.sign_in, email, password))
            assert_throttled(error, SIGN_IN_WINDOW.total_seconds())
            assert "your address" in error.message and email not in error.message
    # Other addresses are not affected.
    with sign_in(shipped.target, bystander.email) as elsewhere:
        assert elsewhere.get_user(0).id == bystander.id
    bystander.client.close()


@pytest.mark.slow
def test_known_and_unknown_emails_get_the_same_answer_in_content_and_time(
    backend: Backend, processes: Processes, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pairs of one wrong password for an account and one for an email nobody has, back to back (each pair
    from an address of its own, below every limit): the same code, message and details; and the two calls
    of a pair take about as long, against what a call takes (paired, in alternating order, so that the load
    of the machine cancels out). An unknown email answered without a password hash would make the difference
    as long as a whole call."""
    # Password hashing as shipped: with the suite's cheapest, a missing hash would cost nothing to notice.
    flags = ("--sign-in-failures-per-peer", str(PER_PEER), *SHIPPED_HASHING)
    shipped = start_board_server(processes, backend.new_database_url(), backend.workdir, extra=flags)
    pairs = 16
    with BoardClient(shipped.target, timeout=60) as registrar:
        # One account will do: its failures count per address, and every pair has an address of its own.
        known_email = registrar.create_user("Known", new_email("known"), PASSWORD).email
    differences: list[float] = []
    durations: list[float] = []
    for index in range(pairs):
        timed: dict[str, float] = {}
        answers: dict[str, BoardClientError] = {}
        with stranger(shipped, f"127.0.1.{index + 1}") as prober:
            prober.list_users(page_size=1)  # connected before the clock starts
            for which in ("known", "unknown") if index % 2 else ("unknown", "known"):
                email = known_email if which == "known" else new_email("unknown")
                started = time.perf_counter()
                answers[which] = refused(partial(prober.sign_in, email, "not the password"))
                timed[which] = time.perf_counter() - started
        first, second = answers["known"], answers["unknown"]
        assert answer(first) == answer(second)
        assert first.code == grpc.StatusCode.UNAUTHENTICATED and first.message == BAD_CREDENTIALS
        differences.append(timed["known"] - timed["unknown"])
        durations += timed.values()
    typical, difference = statistics.median(durations), statistics.median(differences)
    with capsys.disabled():
        print(
            f"\n[sign-in, {pairs} pairs] median call {typical * 1e3:.1f} ms; median known − unknown "
            f"{difference * 1e3:+.1f} ms ({difference / typical:+.1%})"
        )
    assert abs(difference) < 0.25 * typical, (differences, typical)

    # Once the limit is reached, the answer is the same too (the seconds to wait aside).
    unknown = new_email("unknown")
    with stranger(shipped, "127.0.0.5") as prober:
        for _ in range(SIGN_IN_FAILURE_LIMIT):
            refused(partial(prober.sign_in, known_email, "still not it"))
            refused(partial(prober.sign_in, unknown, "still not it"))
        throttled = [refused(partial(prober.sign_in, email, "x" * 8)) for email in (known_email, unknown)]
    assert len({(e.code, re.sub(r"\d+", "N", e.message)) for e in throttled}) == 1
    assert_throttled(throttled[0], SIGN_IN_WINDOW.total_seconds())


def answer(error: BoardClientError) -> tuple[object, ...]:
    """What a client learns from a failed call."""
    return (error.code, error.message, error.violations, error.retry_after, error.quota_violations)


# --- sign-up -----------------------------------------------------------------------------------------------


def test_sign_ups_per_address_are_limited_across_replicas(backend: Backend, processes: Processes) -> None:
    """Two replicas on one database: the sign-ups of one address count together, whichever serves them."""
    url = backend.new_database_url()
    replicas = [start_board_server(processes, url, backend.workdir, extra=shipped_limits()) for _ in range(2)]
    admin = replicas[0].make_admin()  # signed up from 127.0.0.1
    with stranger(replicas[0], "127.0.0.6") as via_a, stranger(replicas[1], "127.0.0.6") as via_b:
        for n in range(SIGN_UPS):
            (via_a if n % 2 else via_b).create_user("Bot", new_email("bot"), PASSWORD)
        for client in (via_a, via_b):
            error = refused(partial(client.create_user, "Bot", new_email("bot"), PASSWORD))
            assert_throttled(error, SIGN_UP_WINDOW.total_seconds())
            assert "sign-ups from your address" in error.message
    # Other addresses sign up as usual; an admin's accounts are not counted against anyone.
    with BoardClient(replicas[1].target) as newcomer:
        assert newcomer.create_user("Newcomer", new_email(), PASSWORD).id
    with (
        from_address(replicas[0].target, "127.0.0.6") as target,
        BoardClient(target, token=admin.client.token) as by_admin,
    ):
        assert by_admin.create_user("Made by an admin", new_email(), PASSWORD).id
    admin.client.close()
