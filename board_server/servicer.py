# ruff: noqa: N802 - method names are the RPC names that grpc dispatches to.
"""Thin gRPC adapter: proto request → service call → proto response. Imports no SQLAlchemy.

Errors are not handled here: domain exceptions travel up to the interceptor in server.py, which maps them.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from board_server.attachments import AttachmentService, AttachmentView
from board_server.errors import FailedPrecondition
from board_server.records import CommentRecord, PostRecord, UserRecord
from board_server.service import Board
from clients.gen.board.v1 import board_pb2, board_pb2_grpc

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    # Integer arithmetic on the timedelta: exact to the microsecond and 3× faster than Timestamp.FromDatetime.
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def user_to_proto(user: UserRecord) -> board_pb2.User:
    return board_pb2.User(
        id=user.id, name=user.name, email=user.email, create_time=_timestamp(user.create_time)
    )


def post_to_proto(post: PostRecord) -> board_pb2.Post:
    return board_pb2.Post(
        id=post.id,
        user_id=post.user_id,
        title=post.title,
        content=post.content,
        create_time=_timestamp(post.create_time),
        update_time=_timestamp(post.update_time),
    )


def comment_to_proto(comment: CommentRecord) -> board_pb2.Comment:
    return board_pb2.Comment(
        id=comment.id,
        post_id=comment.post_id,
        user_id=comment.user_id,
        content=comment.content,
        create_time=_timestamp(comment.create_time),
        update_time=_timestamp(comment.update_time),
    )


_STATUSES = {
    "PENDING": board_pb2.ATTACHMENT_STATUS_PENDING,
    "TAGGED": board_pb2.ATTACHMENT_STATUS_TAGGED,
    "FAILED": board_pb2.ATTACHMENT_STATUS_FAILED,
}


def attachment_to_proto(item: AttachmentView) -> board_pb2.Attachment:
    message = board_pb2.Attachment(
        id=item.id,
        post_id=item.post_id,
        filename=item.filename,
        content_type=item.content_type,
        size_bytes=item.size_bytes,
        width=item.width,
        height=item.height,
        status=_STATUSES.get(item.status, board_pb2.ATTACHMENT_STATUS_UNSPECIFIED),
        labels=[board_pb2.Label(name=x.name, fraction=x.fraction, pixels=x.pixels) for x in item.labels],
        create_time=_timestamp(item.create_time),
        update_time=_timestamp(item.update_time),
        failure_reason=item.failure_reason,
        attempts=item.attempts,
    )
    if item.model_arch:
        message.model.CopyFrom(
            board_pb2.ModelProvenance(
                arch=item.model_arch,
                weights=item.model_weights,
                sha256=item.model_sha256,
                untrained=item.model_untrained,
            )
        )
    return message


class BoardServicer(board_pb2_grpc.BoardServiceServicer):
    """board.v1.BoardService over the board's use cases."""

    def __init__(self, board: Board, attachments: AttachmentService | None = None) -> None:
        self._board = board
        self._attachments = attachments

    # users

    def CreateUser(
        self, request: board_pb2.CreateUserRequest, context: grpc.ServicerContext
    ) -> board_pb2.User:
        return user_to_proto(self._board.users.create_user(request.name, request.email))

    def GetUser(self, request: board_pb2.GetUserRequest, context: grpc.ServicerContext) -> board_pb2.User:
        return user_to_proto(self._board.users.get_user(request.id))

    def ListUsers(
        self, request: board_pb2.ListUsersRequest, context: grpc.ServicerContext
    ) -> board_pb2.ListUsersResponse:
        page = self._board.users.list_users(request.page_size, request.page_token)
        return board_pb2.ListUsersResponse(
            users=[user_to_proto(u) for u in page.items], next_page_token=page.next_page_token
        )

    def UpdateUser(
        self, request: board_pb2.UpdateUserRequest, context: grpc.ServicerContext
    ) -> board_pb2.User:
        user = request.user
        paths = list(request.update_mask.paths)
        return user_to_proto(self._board.users.update_user(user.id, paths, user.name, user.email))

    def DeleteUser(
        self, request: board_pb2.DeleteUserRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._board.users.delete_user(request.id)
        return empty_pb2.Empty()

    # posts

    def CreatePost(
        self, request: board_pb2.CreatePostRequest, context: grpc.ServicerContext
    ) -> board_pb2.Post:
        return post_to_proto(self._board.posts.create_post(request.user_id, request.title, request.content))

    def GetPost(self, request: board_pb2.GetPostRequest, context: grpc.ServicerContext) -> board_pb2.Post:
        return post_to_proto(self._board.posts.get_post(request.id))

    def ListPosts(
        self, request: board_pb2.ListPostsRequest, context: grpc.ServicerContext
    ) -> board_pb2.ListPostsResponse:
        if request.label and self._attachments is not None:
            page = self._attachments.list_posts_with_label(
                request.label,
                request.min_label_fraction,
                request.user_id,
                request.page_size,
                request.page_token,
            )
        else:
            page = self._board.posts.list_posts(request.user_id, request.page_size, request.page_token)
        return board_pb2.ListPostsResponse(
            posts=[post_to_proto(p) for p in page.items], next_page_token=page.next_page_token
        )

    def UpdatePost(
        self, request: board_pb2.UpdatePostRequest, context: grpc.ServicerContext
    ) -> board_pb2.Post:
        post = request.post
        paths = list(request.update_mask.paths)
        return post_to_proto(self._board.posts.update_post(post.id, paths, post.title, post.content))

    def DeletePost(
        self, request: board_pb2.DeletePostRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._board.posts.delete_post(request.id)
        return empty_pb2.Empty()

    # comments

    def CreateComment(
        self, request: board_pb2.CreateCommentRequest, context: grpc.ServicerContext
    ) -> board_pb2.Comment:
        comment = self._board.comments.create_comment(request.post_id, request.user_id, request.content)
        return comment_to_proto(comment)

    def GetComment(
        self, request: board_pb2.GetCommentRequest, context: grpc.ServicerContext
    ) -> board_pb2.Comment:
        return comment_to_proto(self._board.comments.get_comment(request.id))

    def ListComments(
        self, request: board_pb2.ListCommentsRequest, context: grpc.ServicerContext
    ) -> board_pb2.ListCommentsResponse:
        page = self._board.comments.list_comments(request.post_id, request.page_size, request.page_token)
        return board_pb2.ListCommentsResponse(
            comments=[comment_to_proto(c) for c in page.items], next_page_token=page.next_page_token
        )

    def UpdateComment(
        self, request: board_pb2.UpdateCommentRequest, context: grpc.ServicerContext
    ) -> board_pb2.Comment:
        comment = request.comment
        paths = list(request.update_mask.paths)
        return comment_to_proto(self._board.comments.update_comment(comment.id, paths, comment.content))

    def DeleteComment(
        self, request: board_pb2.DeleteCommentRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._board.comments.delete_comment(request.id)
        return empty_pb2.Empty()

    # attachments

    def _attachment_service(self) -> AttachmentService:
        if self._attachments is None:  # only when wired without attachments (e.g. a bench floor)
            raise FailedPrecondition("attachments are not enabled on this server")
        return self._attachments

    def AddAttachment(
        self, request: board_pb2.AddAttachmentRequest, context: grpc.ServicerContext
    ) -> board_pb2.Attachment:
        item = self._attachment_service().add_attachment(
            request.post_id, request.filename, request.content_type, request.data
        )
        return attachment_to_proto(item)

    def GetAttachment(
        self, request: board_pb2.GetAttachmentRequest, context: grpc.ServicerContext
    ) -> board_pb2.Attachment:
        return attachment_to_proto(self._attachment_service().get_attachment(request.id))

    def ListAttachments(
        self, request: board_pb2.ListAttachmentsRequest, context: grpc.ServicerContext
    ) -> board_pb2.ListAttachmentsResponse:
        items = self._attachment_service().list_attachments(request.post_id)
        return board_pb2.ListAttachmentsResponse(attachments=[attachment_to_proto(a) for a in items])

    def GetAttachmentContent(
        self, request: board_pb2.GetAttachmentContentRequest, context: grpc.ServicerContext
    ) -> board_pb2.GetAttachmentContentResponse:
        data, content_type = self._attachment_service().get_content(request.id)
        return board_pb2.GetAttachmentContentResponse(data=data, content_type=content_type)

    def GetAttachmentMask(
        self, request: board_pb2.GetAttachmentMaskRequest, context: grpc.ServicerContext
    ) -> board_pb2.GetAttachmentMaskResponse:
        return board_pb2.GetAttachmentMaskResponse(png=self._attachment_service().get_mask(request.id))

    def DeleteAttachment(
        self, request: board_pb2.DeleteAttachmentRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._attachment_service().delete_attachment(request.id)
        return empty_pb2.Empty()
