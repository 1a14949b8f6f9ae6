"""Seeding a board for a benchmark through the generated stubs: a user with a password, a sign-in, posts."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Seed:
    """What the load needs: the author, the seeded post ids and the access token ("" without accounts)."""

    user_id: int
    post_ids: list[int]
    token: str
    sign_in: str  # "OK", or the status SignIn answered on a server without accounts

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


# What a server without accounts answers to SignIn: UNIMPLEMENTED, or INTERNAL where its error interceptor
# maps the generated base servicer's NotImplementedError. Safe to accept: a server WITH accounts would then
# refuse the token-less CreatePost calls of the seeding, and the bench would stop there.
_NO_ACCOUNTS = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL)


def seed(target: str, posts: int) -> Seed:
    """Create a user with a password, sign in (no token on a server without accounts) and create ``posts``
    posts through the generated stubs; raise grpc.RpcError when any of that fails otherwise."""
    from clients.gen.board.v1 import board_pb2, board_pb2_grpc

    email, password = f"bench-{secrets.token_hex(6)}@example.org", f"bench-{secrets.token_hex(12)}"
    with grpc.insecure_channel(target) as channel:
        stub = board_pb2_grpc.BoardServiceStub(channel)  # type: ignore[no-untyped-call]
        user = stub.CreateUser(board_pb2.CreateUserRequest(name="Bench", email=email, password=password))
        try:
            signed = stub.SignIn(board_pb2.SignInRequest(email=email, password=password), timeout=30)
            token, sign_in = signed.access_token, "OK"
        except grpc.RpcError as exc:
            if not isinstance(exc, grpc.Call) or exc.code() not in _NO_ACCOUNTS:
                raise
            token, sign_in = "", f"{exc.code().name} ({exc.details()})"
        metadata = (("authorization", f"Bearer {token}"),) if token else ()

        def create(i: int) -> int:
            request = board_pb2.CreatePostRequest(user_id=user.id, title=f"post {i}", content="y" * 200)
            post_id: int = stub.CreatePost(request, metadata=metadata, timeout=60).id
            return post_id

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(create, range(posts)))
    return Seed(user.id, ids, token, sign_in)
