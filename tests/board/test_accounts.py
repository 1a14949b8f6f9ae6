"""Accounts against real servers: private emails, sessions and their revocation (across replicas too), what
the database keeps, the sign-in limit, expiry, argon2 upgrades, read access, malformed credentials; and the
in-process cost of the token check."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import cast

import grpc
import pytest
from argon2 import PasswordHasher
from sqlalchemy import Connection, Engine, MetaData, Table, select, update

from board_server.domain.accounts import (
    ANONYMOUS,
    BAD_CREDENTIALS,
    SIGN_IN_FAILURE_LIMIT,
    SIGN_IN_WINDOW,
    Accounts,
    password_hasher,
)
from board_server.storage.engine import migrate, open_database
from board_server.storage.tables import AccessToken, SignInFailure, User
from clients.board import (
    BoardClient,
    BoardClientError,
    FailedPreconditionError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from clients.gen.board.v1 import board_pb2, board_pb2_grpc
from tests.board.conftest import (
    PASSWORD,
    SHIPPED_HASHING,
    Backend,
    Member,
    MemberFactory,
    RunningServer,
    at_once,
    database_engine,
    new_email,
    sign_in,
    sign_up,
    start_board_server,
    tiny_png,
)
from tests.support import Processes, wait_for

TOKENS, USERS, FAILURES = (cast(Table, model.__table__) for model in (AccessToken, User, SignInFailure))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def session_token(target: str, email: str, password: str = PASSWORD) -> str:
    """The access token of a new session (its client closed: the session lives on in the database)."""
    with sign_in(target, email, password) as board:
        assert board.token
        return board.token


def refused(call: Callable[[], object]) -> BoardClientError:
    """The error ``call()`` raises (it must raise)."""
    try:
        call()
    except BoardClientError as exc:
        return exc
    raise AssertionError("the call should have been refused")


def refused_soon(call: Callable[[], object], within_s: float = 2.0) -> UnauthenticatedError:
    """The UNAUTHENTICATED ``call()`` gets within ``within_s``: a replica on PostgreSQL hears of a revocation
    made through another from its notification (milliseconds; domain/session_cache.py), on SQLite at once.
    Until then the call is served as before (a deleted user's own row: NOT_FOUND)."""
    deadline = time.monotonic() + within_s
    last: object = "served"
    while True:
        try:
            call()
        except UnauthenticatedError as exc:
            return exc
        except BoardClientError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"not refused {within_s:g} s after the revocation; last: {last!r}")
        time.sleep(0.01)


# --- private fields ----------------------------------------------------------------------------------------


def test_email_and_admin_flag_are_seen_only_by_the_user_and_admins(
    board_server: RunningServer, members: MemberFactory, admin: Member, anonymous: BoardClient
) -> None:
    ada, bob = members("Ada"), members("Bob")
    readers = {
        "anonymous": anonymous,
        "another user": bob.client,
        "the user": ada.client,
        "an admin": admin.client,
    }
    for who, reader in readers.items():
        sees_email = who in ("the user", "an admin")
        got = reader.get_user(ada.id)
        assert (got.name, got.email) == ("Ada", ada.email if sees_email else ""), who
        listed = {u.id: u for u in reader.iter_users(page_size=1000)}
        assert listed[ada.id] == got, who
        # An admin's flag is private too: only the admin themself and other admins see it.
        boss = reader.get_user(admin.id)
        sees_flag = who == "an admin"
        assert (boss.admin, boss.email) == ((True, admin.email) if sees_flag else (False, "")), who
    # What an admin changes comes back whole.
    assert admin.client.update_user(bob.id, name="Robert").email == bob.email
    # Signing in returns the caller's own account, email included (the email matches in any case).
    with board_server.client() as fresh:
        assert fresh.sign_in(ada.email.upper(), PASSWORD).user.email == ada.email


def test_users_list_shows_nobody_elses_email(
    members: MemberFactory, admin: Member, anonymous: BoardClient
) -> None:
    # Its own other users (a member and an admin): under xdist it may be the first test of a fresh board.
    ada, bob = members("Ada"), members("Bob")
    others = {u.id: u for u in ada.client.iter_users(page_size=1000) if u.id != ada.id}
    assert {bob.id, admin.id} <= others.keys()
    assert all(u.email == "" and not u.admin for u in others.values())
    assert all(u.email == "" for u in anonymous.iter_users(page_size=1000))


# --- read access -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def members_only(tmp_path_factory: pytest.TempPathFactory, module_processes: Processes) -> RunningServer:
    """A server whose reads need a token (``--read-access signed-in``); reads do not depend on the backend."""
    workdir = tmp_path_factory.mktemp("members-only")
    return start_board_server(
        module_processes, f"sqlite:///{workdir / 'board.db'}", workdir, extra=("--read-access", "signed-in")
    )


def test_read_access_signed_in_makes_every_read_need_a_token(members_only: RunningServer) -> None:
    # Signing up and signing in stay open to anonymous callers, or nobody could ever get a token.
    member = sign_up(members_only.target, "Insider")
    with member.client as insider, members_only.client() as outsider:
        post = insider.create_post(0, "members only", "text")
        comment = insider.create_comment(post.id, 0, "c")
        attachment = insider.add_attachment(post.id, "a.png", tiny_png())
        reads: dict[str, Callable[[BoardClient], object]] = {
            "GetUser": lambda c: c.get_user(member.id),
            "ListUsers": lambda c: c.list_users(),
            "GetPost": lambda c: c.get_post(post.id),
            "ListPosts": lambda c: c.list_posts(),
            "ListPosts by label": lambda c: c.list_posts(label="dog"),
            "ListPosts filtered": lambda c: c.list_posts(filter=f"user_id = {member.id}", order_by="id desc"),
            "ListPosts with attachments": lambda c: c.list_posts(with_attachments=True),
            "GetComment": lambda c: c.get_comment(comment.id),
            "ListComments": lambda c: c.list_comments(post.id),
            "GetAttachment": lambda c: c.get_attachment(attachment.id),
            "ListAttachments": lambda c: c.list_attachments_page(post.id),
            "GetAttachmentContent": lambda c: c.get_attachment_content(attachment.id),
            "GetAttachmentPreview": lambda c: c.get_attachment_preview(attachment.id),
            "WatchAttachment": lambda c: next(iter(c.watch_attachment(attachment.id, timeout=20))),
        }
        for name, read in reads.items():
            assert refused(partial(read, outsider)).code == grpc.StatusCode.UNAUTHENTICATED, name
            read(insider)  # the same read with a token is answered
        with pytest.raises(UnauthenticatedError):
            outsider.get_attachment_mask(attachment.id)
        with pytest.raises(FailedPreconditionError):  # past the token check: there is no mask yet
            insider.get_attachment_mask(attachment.id)


# --- sessions ----------------------------------------------------------------------------------------------


def test_sign_out_revokes_that_token_at_once_and_no_other(
    board_server: RunningServer, member: Member
) -> None:
    with (
        sign_in(board_server.target, member.email) as laptop,
        sign_in(board_server.target, member.email) as phone,
    ):
        stale = laptop.token
        assert stale and stale != phone.token != member.client.token
        laptop.sign_out()
        assert laptop.token is None
        with board_server.client(token=stale) as thief:
            for call in (lambda: thief.get_user(member.id), lambda: thief.create_post(0, "t", "c")):
                error = refused(call)
                assert error.code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in error.message
            with pytest.raises(UnauthenticatedError):
                thief.sign_out()  # twice: the token is gone
            # A client holding a dead token can still sign in: SignIn looks at no token.
            assert thief.sign_in(member.email, PASSWORD).access_token != stale
        assert phone.create_post(0, "still signed in", "on the phone").user_id == member.id
        assert member.client.get_user(member.id).email == member.email


def test_password_change_keeps_the_callers_session_and_ends_every_other(
    board_server: RunningServer, member: Member
) -> None:
    with sign_in(board_server.target, member.email) as other_device:
        member.client.update_user(member.id, password="a brand new password", current_password=PASSWORD)
        assert member.client.create_post(0, "still here", "my own session survives").user_id == member.id
        error = refused(lambda: other_device.get_user(member.id))
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
    with board_server.client() as again:
        assert refused(lambda: again.sign_in(member.email, PASSWORD)).message == BAD_CREDENTIALS
        again.sign_in(member.email, "a brand new password")
        assert again.get_user(member.id).email == member.email


def test_password_set_by_an_admin_ends_every_session_of_the_user(
    board_server: RunningServer, member: Member, admin: Member
) -> None:
    admin.client.update_user(member.id, password="chosen by the admin")
    with pytest.raises(UnauthenticatedError):
        member.client.get_user(member.id)
    assert admin.client.get_user(admin.id).admin  # the admin's own session is untouched
    with sign_in(board_server.target, member.email, "chosen by the admin") as again:
        assert again.get_user(member.id).email == member.email


def test_a_token_revoked_through_one_replica_is_refused_by_the_other(
    backend: Backend, processes: Processes
) -> None:
    url = backend.new_database_url()
    replica_a = start_board_server(processes, url, backend.workdir)
    replica_b = start_board_server(processes, url, backend.workdir)
    member = sign_up(replica_a.target, "Roamer")
    with member.client as on_a, replica_b.client(token=member.client.token) as on_b:
        assert on_b.create_post(0, "through B", "with A's token").user_id == member.id  # shared sessions
        on_a.sign_out()
        error = refused_soon(lambda: on_b.get_user(member.id))
        assert error.code == grpc.StatusCode.UNAUTHENTICATED

        # A password change through A ends a session opened (and used) through B.
        on_a.sign_in(member.email, PASSWORD)
        with sign_in(replica_b.target, member.email) as second_on_b:
            assert second_on_b.get_user(member.id).id == member.id
            on_a.update_user(member.id, password="changed through A", current_password=PASSWORD)
            assert isinstance(refused_soon(lambda: second_on_b.get_user(member.id)), UnauthenticatedError)
            # And a deletion through B ends A's session (used through A just before).
            second_on_b.sign_in(member.email, "changed through A")
            on_a.sign_in(member.email, "changed through A")
            assert on_a.get_user(member.id).id == member.id
            second_on_b.delete_user(member.id)
            with pytest.raises(UnauthenticatedError):
                second_on_b.get_user(member.id)
        assert isinstance(refused_soon(lambda: on_a.get_user(member.id)), UnauthenticatedError)


def test_a_deleted_or_demoted_caller_loses_its_powers_at_once(
    board_server: RunningServer, members: MemberFactory
) -> None:
    ada, bob = members("Ada"), members("Bob")
    post = bob.client.create_post(0, "Bob's", "text")
    assert board_server.admin("grant", ada.email).returncode == 0
    ada.client.update_post(post.id, title="moderated")  # the same token, an admin now
    assert board_server.admin("revoke", ada.email).returncode == 0
    with pytest.raises(PermissionDeniedError):
        ada.client.delete_post(post.id)
    assert bob.client.get_post(post.id).title == "moderated"


# --- what the database keeps -------------------------------------------------------------------------------


def every_value(engine: Engine) -> list[str]:
    """Every value of every row of every table, as text (bytes both as latin-1 text and as hex)."""
    metadata = MetaData()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # expression indexes (lower(email)) are not reflected; they hold no values
        metadata.reflect(engine)
    values: list[str] = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        raw = bytes(value)
                        values += [raw.decode("latin-1"), raw.hex()]
                    else:
                        values.append(str(value))
    return values


def test_the_database_never_holds_a_plaintext_password_or_token(
    backend: Backend, processes: Processes
) -> None:
    server = start_board_server(processes, backend.new_database_url(), backend.workdir)
    marker = uuid.uuid4().hex
    first, second, third = (f"{marker}-password-{n}" for n in ("one", "two", "three"))
    wrong = f"{marker}-wrong-guess"
    member = sign_up(server.target, "Secretive", password=first)
    tokens = [session_token(server.target, member.email, first) for _ in range(2)]
    with member.client as board:
        board.update_user(member.id, password=second, current_password=first)  # through the API
        with server.client() as guesser:
            for email in (member.email, new_email("nobody")):
                with pytest.raises(UnauthenticatedError):
                    guesser.sign_in(email, wrong)
        set_by_operator = server.admin("set-password", member.email, stdin=third + "\n")  # by the operator
        assert set_by_operator.returncode == 0, set_by_operator.stderr
    tokens += [str(member.client.token), session_token(server.target, member.email, third)]
    secrets = [first, second, third, wrong, *tokens]

    with database_engine(server.database_url) as engine:
        values = every_value(engine)
        with engine.connect() as conn:
            stored_hash = conn.execute(
                select(USERS.c.password_hash).where(USERS.c.id == member.id)
            ).scalar_one()
    text = "\n".join(values)
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"{len(leaked)} secrets found in the database"
    # What is there instead: an argon2id hash, and the live token's SHA-256 (so the search looked in the
    # right places).
    assert stored_hash.startswith("$argon2id$") and PasswordHasher().verify(stored_hash, third)
    assert digest(tokens[-1]) in values
    if backend.name == "sqlite":  # the file itself, write-ahead log included, not only what SELECT returns
        path = Path(server.database_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
        assert not [s for s in secrets if s.encode() in raw]
    # Never logged either.
    logs = server.log() + server.audit_log.read_text()
    assert not [s for s in secrets if s in logs]


# --- the sign-in limit -------------------------------------------------------------------------------------


def test_failed_sign_ins_are_limited_per_email_with_retry_info(
    board_server: RunningServer, member: Member, anonymous: BoardClient
) -> None:
    unknown = new_email("nobody")
    for attempt in range(SIGN_IN_FAILURE_LIMIT):
        guess = f"wrong guess {attempt}"
        wrong_password = refused(partial(anonymous.sign_in, member.email, guess))
        unknown_email = refused(partial(anonymous.sign_in, unknown, guess))
        # The same answer whether the email exists or not: nothing to learn about who has an account.
        for error in (wrong_password, unknown_email):
            assert error.code == grpc.StatusCode.UNAUTHENTICATED and error.message == BAD_CREDENTIALS
    for email, password in [(member.email, PASSWORD), (member.email.upper(), "wrong"), (unknown, PASSWORD)]:
        error = refused(partial(anonymous.sign_in, email, password))
        assert isinstance(error, ResourceExhaustedError), error  # even the right password, for now
        assert error.retry_after is not None and 0 < error.retry_after <= SIGN_IN_WINDOW.total_seconds()
        assert "too many failed sign-ins" in error.message and email.lower() not in error.message
    assert member.client.get_user(member.id).email == member.email  # open sessions are not affected
    with sign_in(board_server.target, sign_up(board_server.target).email) as bystander:
        assert bystander.token  # other emails sign in as usual

    # Failures older than the window no longer count.
    with database_engine(board_server.database_url) as engine, engine.begin() as conn:
        aged = datetime.now(UTC) - SIGN_IN_WINDOW - timedelta(minutes=1)
        conn.execute(
            update(FAILURES).where(FAILURES.c.email == member.email.lower()).values(attempt_time=aged)
        )
    anonymous.sign_in(member.email, PASSWORD)
    assert anonymous.get_user(member.id).email == member.email


def test_the_sign_in_limit_holds_for_guesses_sent_all_at_once(
    board_server: RunningServer, member: Member
) -> None:
    guesses = 4 * SIGN_IN_FAILURE_LIMIT
    outcomes = at_once(
        [board_server.target], guesses, lambda client, n: client.sign_in(member.email, f"parallel guess {n}")
    )
    codes = Counter(grpc.StatusCode.OK if e is None else e.code for e in outcomes)
    # Each UNAUTHENTICATED is a password that was checked: at most the limit, however the guesses arrive.
    assert codes[grpc.StatusCode.UNAUTHENTICATED] <= SIGN_IN_FAILURE_LIMIT, codes
    assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= guesses - SIGN_IN_FAILURE_LIMIT, codes


# --- expiry ------------------------------------------------------------------------------------------------


def test_an_expired_token_is_unauthenticated(board_server: RunningServer, member: Member) -> None:
    with sign_in(board_server.target, member.email) as expiring:
        token = expiring.token
        assert token
        with database_engine(board_server.database_url) as engine, engine.begin() as conn:
            past = datetime.now(UTC) - timedelta(seconds=1)
            changed = conn.execute(
                update(TOKENS).where(TOKENS.c.token_hash == digest(token)).values(expire_time=past)
            )
            assert changed.rowcount == 1
        for call in (lambda: expiring.get_user(member.id), lambda: expiring.create_post(0, "t", "c")):
            error = refused(call)
            assert error.code == grpc.StatusCode.UNAUTHENTICATED and "expired" in error.message
        assert expiring.sign_in(member.email, PASSWORD).access_token != token
        expiring.create_post(0, "t", "signed in again")
    member.client.get_user(member.id)  # the member's other session has its own expiry


def test_expired_sessions_and_old_failures_are_swept_at_start(backend: Backend, processes: Processes) -> None:
    url = backend.new_database_url()
    first = start_board_server(processes, url, backend.workdir)
    member = sign_up(first.target)
    with sign_in(first.target, member.email) as stale:
        token = stale.token
    assert token
    with database_engine(url) as engine, engine.begin() as conn:
        long_ago = datetime.now(UTC) - SIGN_IN_WINDOW - timedelta(minutes=1)
        conn.execute(update(TOKENS).where(TOKENS.c.token_hash == digest(token)).values(expire_time=long_ago))
        conn.execute(
            FAILURES.insert(),
            [{"email": f"spray-{i}@example.org", "attempt_time": long_ago} for i in range(3)],
        )
    Processes.stop(first.proc)
    second = start_board_server(processes, url, backend.workdir)  # sweeps at start, then every 10 minutes

    def swept() -> bool:
        with database_engine(url) as engine, engine.connect() as conn:
            tokens = conn.execute(select(TOKENS.c.id).where(TOKENS.c.token_hash == digest(token))).all()
            failures = conn.execute(select(FAILURES.c.id)).all()
        return not tokens and not failures

    wait_for("expired sessions and old failures deleted", swept, timeout=30)
    with BoardClient(second.target, token=member.client.token) as kept:
        assert kept.get_user(0).id == member.id  # a live session is kept


def test_sign_in_reports_the_expiry_of_the_configured_lifetime(
    board_server: RunningServer, member: Member, tmp_path: Path, processes: Processes
) -> None:
    with board_server.client() as board:
        session = board.sign_in(member.email, PASSWORD)
    expected = datetime.now(UTC) + timedelta(days=30)  # the default
    assert abs(session.expire_time.ToDatetime(UTC) - expected) < timedelta(minutes=5)

    short = start_board_server(
        processes, f"sqlite:///{tmp_path / 'short.db'}", tmp_path, extra=("--token-lifetime", "90s")
    )
    brief = sign_up(short.target)
    with brief.client as board:
        session = board.sign_in(brief.email, PASSWORD)
        lifetime = session.expire_time.ToDatetime(UTC) - datetime.now(UTC)
        assert timedelta(seconds=30) < lifetime <= timedelta(seconds=90)
        with database_engine(short.database_url) as engine, engine.connect() as conn:
            stored = conn.execute(
                select(TOKENS.c.expire_time).where(TOKENS.c.token_hash == digest(session.access_token))
            ).scalar_one()
        assert abs(stored.replace(tzinfo=UTC) - session.expire_time.ToDatetime(UTC)) < timedelta(seconds=1)


# --- argon2 parameters -------------------------------------------------------------------------------------


def test_a_hash_with_old_argon2_parameters_is_upgraded_at_sign_in(
    processes: Processes, tmp_path: Path
) -> None:
    # The parameters as shipped (the suite's other servers hash with the cheapest).
    board_server = start_board_server(
        processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path, extra=SHIPPED_HASHING
    )
    member = sign_up(board_server.target)
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
    current = PasswordHasher()
    assert SHIPPED_HASHING[1] == "rfc9106-low-memory" and password_hasher().memory_cost == current.memory_cost
    assert current.check_needs_rehash(weak.hash(PASSWORD))

    def stored() -> str:
        with database_engine(board_server.database_url) as engine, engine.connect() as conn:
            return str(
                conn.execute(select(USERS.c.password_hash).where(USERS.c.id == member.id)).scalar_one()
            )

    assert not current.check_needs_rehash(stored())  # sign-up used today's parameters
    old = weak.hash(PASSWORD)
    with database_engine(board_server.database_url) as engine, engine.begin() as conn:
        conn.execute(update(USERS).where(USERS.c.id == member.id).values(password_hash=old))

    with board_server.client() as board:
        with pytest.raises(UnauthenticatedError):
            board.sign_in(member.email, "not the password")
        assert stored() == old  # a failed sign-in never rewrites the hash
        board.sign_in(member.email, PASSWORD)
    upgraded = stored()
    assert upgraded != old and upgraded.startswith("$argon2id$")
    assert not current.check_needs_rehash(upgraded) and current.verify(upgraded, PASSWORD)
    assert f"m={current.memory_cost},t={current.time_cost},p={current.parallelism}" in upgraded
    with board_server.client() as board:
        board.sign_in(member.email, PASSWORD)  # and the new hash works
    assert stored() == upgraded  # nothing left to upgrade


# --- malformed credentials ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "Bearer not-a-real-token",
        "Bearer " + "x" * 600,
        "token abc",
    ],
)
def test_a_malformed_or_unknown_authorization_is_unauthenticated_even_for_reads(
    board_server: RunningServer, authorization: str
) -> None:
    with grpc.insecure_channel(board_server.target) as channel:
        stub = board_pb2_grpc.BoardServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListPosts(
                board_pb2.ListPostsRequest(), metadata=[("authorization", authorization)], timeout=20
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "x" * 100 not in (caught.value.details() or "")  # never echoed


def test_the_bearer_scheme_is_case_insensitive(board_server: RunningServer, member: Member) -> None:
    with grpc.insecure_channel(board_server.target) as channel:
        stub = board_pb2_grpc.BoardServiceStub(channel)  # type: ignore[no-untyped-call]
        user = stub.GetUser(
            board_pb2.GetUserRequest(id=member.id),
            metadata=[("authorization", f"bearer {member.client.token}")],
            timeout=20,
        )
    assert user.email == member.email


# --- the cost of the token check ---------------------------------------------------------------------------


def test_the_cost_of_the_token_check_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """µs per ``Accounts.authenticate`` with a valid token on SQLite: a figure for the record, no assert."""
    from board_server.storage import sessions as accounts_repo
    from board_server.storage import users as user_rows

    database = open_database(f"sqlite:///{tmp_path / 'cost.db'}")
    accounts = Accounts(database, auth=True, reads_need_sign_in=False, token_lifetime=timedelta(days=30))
    try:
        migrate(database.engine)

        async def measure() -> dict[str, float]:
            password_hash = await accounts.hash_password(PASSWORD)
            now = datetime.now(UTC)

            def populate(conn: Connection) -> None:
                # Tables with some rows, like a board in use: 1,000 users with 5 sessions each.
                for n in range(1000):
                    email = "timed@example.org" if n == 0 else new_email()
                    user = user_rows.add_user(
                        conn,
                        name="Timed",
                        email=email,
                        email_canonical=email,
                        now=now,
                        password_hash=password_hash,
                    )
                    for _ in range(5):
                        digest_of_other = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
                        accounts_repo.add_token(conn, user.id, digest_of_other, now, now + timedelta(days=1))

            database.write(populate)
            token = (await accounts.sign_in(ANONYMOUS, "timed@example.org", PASSWORD)).token
            header = f"Bearer {token}"
            figures: dict[str, float] = {}
            for name, value in (("valid token", header), ("no token", None)):
                for _ in range(200):  # warm up: statement cache, per-thread read connection
                    await accounts.authenticate(value)
                runs = []
                for _ in range(5):
                    started = time.perf_counter()
                    for _ in range(2000):
                        await accounts.authenticate(value)
                    runs.append((time.perf_counter() - started) / 2000 * 1e6)
                figures[name] = min(runs)
            caller = await accounts.authenticate(header)
            assert caller.signed_in
            return figures

        figures = asyncio.run(measure())
    finally:
        accounts.close()
        database.dispose()
    with capsys.disabled():
        print(
            f"\n[token check, SQLite, in-process] authenticate(valid token): {figures['valid token']:.1f} µs"
            f" per call (best of 5 x 2000); without a token: {figures['no token']:.2f} µs"
        )
    assert figures["valid token"] > 0
