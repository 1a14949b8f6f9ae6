"""ORM tables of the board (SQLAlchemy 2.0 typed mappings).

The schema itself is created by the Alembic migrations; tests/board/test_schema.py checks that these
mappings stay in step with them. The row queries (storage/*.py) use their ``__table__``s with Core statements.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from board_server.core.limits import (
    EMAIL_MAX,
    FILENAME_MAX,
    NAME_MAX,
    PEER_MAX,
    TITLE_MAX,
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")

# SQLite AUTOINCREMENT: the id of a deleted row is never handed out again, so keyset pages and old
# references stay unambiguous.
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive text, so we re-attach UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    # As the user typed it; two spellings with one canonical form are one account (below).
    email: Mapped[str] = mapped_column(String(EMAIL_MAX))
    # core.emails.canonical_email(email), computed in Python; unique (ix_users_email_canonical), and what
    # sign-in and the admin commands look an email up by. The default only lets the migration add it.
    email_canonical: Mapped[str] = mapped_column(String(EMAIL_MAX), server_default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    # argon2id hash; NULL for users created before accounts existed (they cannot sign in until an admin
    # sets a password) and for users created while auth is off without a password.
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    admin: Mapped[bool] = mapped_column(Boolean(), server_default=false())
    # Bumped by every change of the row: the user's etag (users have no update_time to derive one from).
    version: Mapped[int] = mapped_column(Integer(), server_default=text("1"))


Index("ix_users_email_canonical", User.email_canonical, unique=True)


class AccessToken(Base):
    """A signed-in session: only the SHA-256 of the bearer token is kept; revoking deletes the row."""

    __tablename__ = "access_tokens"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), index=True, unique=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    expire_time: Mapped[datetime] = mapped_column(UTCDateTime())


class SignInFailure(Base):
    """One failed sign-in (or wrong current password) for an email from a client address: the limits count
    these in a window, per (email, address) and per address."""

    __tablename__ = "sign_in_failures"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The canonical form of the email as typed (whether or not such a user exists).
    email: Mapped[str] = mapped_column(String(EMAIL_MAX))
    attempt_time: Mapped[datetime] = mapped_column(UTCDateTime())
    peer: Mapped[str] = mapped_column(String(PEER_MAX), server_default="")


Index("ix_sign_in_failures_email_time", SignInFailure.email, SignInFailure.attempt_time)
Index("ix_sign_in_failures_peer_time", SignInFailure.peer, SignInFailure.attempt_time)


class SignUp(Base):
    """One sign-up attempt from a client address: the sign-up limit counts these in a window."""

    __tablename__ = "sign_ups"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    peer: Mapped[str] = mapped_column(String(PEER_MAX))
    attempt_time: Mapped[datetime] = mapped_column(UTCDateTime())


Index("ix_sign_ups_peer_time", SignUp.peer, SignUp.attempt_time)


class WriteTally(Base):
    """How many writes a user made in one minute (``minute``: seconds since the epoch // 60) through one
    database connection (``shard``: PostgreSQL's backend pid; 0 on SQLite): the user's writes in a minute are
    the sum over shards. A transaction counts on its own connection's row, so concurrent writes of one user
    never wait for each other's counter lock."""

    __tablename__ = "write_tallies"

    user_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    minute: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    shard: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=False)
    writes: Mapped[int] = mapped_column(Integer())


class WriteCount(Base):
    """The previous release's write counter (one row per user and minute), which it keeps using while a
    rolling update replaces it (a migration keeps the previous release working); this one never reads or
    writes it. A later migration drops it."""

    __tablename__ = "write_counts"

    user_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    minute: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    writes: Mapped[int] = mapped_column(Integer())


class DeploymentSecret(Base):
    """A secret of the deployment (e.g. the page-token key), created on first start, shared by replicas."""

    __tablename__ = "deployment_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary())
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Post(Base):
    __tablename__ = "posts"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(TITLE_MAX))
    content: Mapped[str] = mapped_column(Text())
    create_time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


class Comment(Base):
    __tablename__ = "comments"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    post_id: Mapped[int] = mapped_column(BigId, ForeignKey("posts.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    content: Mapped[str] = mapped_column(Text())
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


# --- attachments --------------------------------------------------------------------------------------------


class Attachment(Base):
    """An image on a post; its bytes and mask live here too, so replicas share everything through the DB.

    The tagging queue is this table: ``status`` PENDING rows are claimed with a lease (``claimed_by``,
    ``lease_until``) by a conditional UPDATE, retried at ``next_attempt_time`` (storage/tagging_queue.py).
    """

    __tablename__ = "attachments"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    post_id: Mapped[int] = mapped_column(BigId, ForeignKey("posts.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(FILENAME_MAX))
    content_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger())
    width: Mapped[int] = mapped_column(Integer())
    height: Mapped[int] = mapped_column(Integer())
    data: Mapped[bytes] = mapped_column(LargeBinary())
    status: Mapped[str] = mapped_column(String(16))
    failure_reason: Mapped[str | None] = mapped_column(Text(), nullable=True)
    mask_png: Mapped[bytes | None] = mapped_column(LargeBinary(), nullable=True)
    model_arch: Mapped[str | None] = mapped_column(String(100), nullable=True)
    model_weights: Mapped[str | None] = mapped_column(String(500), nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_untrained: Mapped[bool | None] = mapped_column(Boolean(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer())
    next_attempt_time: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
    # Fencing per claim: results are stored only under the token of the claim that holds the lease.
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # A re-tag is queued: status and labels stay as they are until the new labels replace them.
    retag_pending: Mapped[bool] = mapped_column(Boolean(), server_default=false())
    # SHA-256 of the TorchScript program that produced the labels: the served model's exact identity.
    model_archive_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # W3C traceparent of the upload: tagging on any replica joins the upload's trace.
    traceparent: Mapped[str | None] = mapped_column(String(64), nullable=True)


# The worker's scans: pending rows due for an attempt, then queued re-tags.
Index("ix_attachments_queue", Attachment.status, Attachment.next_attempt_time)
Index("ix_attachments_retag", Attachment.retag_pending, Attachment.next_attempt_time)


class AttachmentLabel(Base):
    """One class found in an attachment; post_id is copied here so the label filter needs no join."""

    __tablename__ = "attachment_labels"

    attachment_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("attachments.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    # Indexed by ix_attachment_labels_post_name_fraction (post_id first), below.
    post_id: Mapped[int] = mapped_column(BigId, ForeignKey("posts.id", ondelete="CASCADE"))
    fraction: Mapped[float] = mapped_column(Float())
    pixels: Mapped[int] = mapped_column(BigInteger())


# ListPosts(label=..., min_label_fraction=...): an index range scan yields the matching posts.
Index(
    "ix_attachment_labels_name_fraction",
    AttachmentLabel.name,
    AttachmentLabel.fraction,
    AttachmentLabel.post_id,
)
# ListPosts(filter=...): each label predicate is a covering lookup per post.
Index(
    "ix_attachment_labels_post_name_fraction",
    AttachmentLabel.post_id,
    AttachmentLabel.name,
    AttachmentLabel.fraction,
    AttachmentLabel.attachment_id,
)


class AttachmentPreview(Base):
    """A rendered preview (cache): one per attachment, size of the ladder, overlay and format; dropped with
    re-tagging, evicted least recently used first beyond the cache's budget (domain/attachments.py)."""

    __tablename__ = "attachment_previews"

    attachment_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("attachments.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    max_size: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=False)
    overlay: Mapped[bool] = mapped_column(Boolean(), primary_key=True)
    content_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary())
    width: Mapped[int] = mapped_column(Integer())
    height: Mapped[int] = mapped_column(Integer())
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    size_bytes: Mapped[int] = mapped_column(Integer())  # len(data): the budget sums these
    last_use_time: Mapped[datetime] = mapped_column(UTCDateTime())


# Eviction takes the least recently used first; the budget's sum reads this index alone.
Index("ix_attachment_previews_last_use", AttachmentPreview.last_use_time, AttachmentPreview.size_bytes)


class RequestId(Base):
    """A create's request_id (AIP-155), remembered with the resource it created until the TTL sweep: a repeat
    by the same caller returns that resource. The key decides between concurrent duplicates."""

    __tablename__ = "request_ids"

    # The signed-in caller; 0 for anonymous calls (sign-up, or anyone while auth is off).
    caller_id: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))  # SHA-256 (hex) of what the request asked for
    resource_id: Mapped[int] = mapped_column(BigInteger())
    create_time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class ServedModel(Base):
    """The model TorchServe serves under ``name``, as it last described itself (for re-tags, filters)."""

    __tablename__ = "served_models"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    arch: Mapped[str] = mapped_column(String(100))
    weights: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    archive_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    untrained: Mapped[bool] = mapped_column(Boolean())
    class_names: Mapped[str] = mapped_column(Text())  # JSON list; index = the mask's pixel value
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
