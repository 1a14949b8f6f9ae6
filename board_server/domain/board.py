"""The board's use cases, one service per resource: what every transport calls (gRPC today, Connect for
browsers next), so that no rule is written twice."""

from __future__ import annotations

from dataclasses import dataclass

from board_server.domain.attachments import AttachmentService
from board_server.domain.comments import CommentService
from board_server.domain.posts import PostService
from board_server.domain.retag import Retagging
from board_server.domain.uploads import Uploads
from board_server.domain.users import UserService


@dataclass(frozen=True)
class Board:
    users: UserService
    posts: PostService
    comments: CommentService
    attachments: AttachmentService
    uploads: Uploads
    retagging: Retagging
