# ruff: noqa: N802 - method names are the RPC names that grpc dispatches to.
"""Thin gRPC adapter: proto request → use case → proto response. Imports no SQLAlchemy.

Errors are not handled here: domain exceptions travel up to the interceptor (api/interceptors.py), which
maps them; the same guard (api/calls.py) has already put the authenticated caller in ``current_caller()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from board_server.api.calls import current_caller
from board_server.api.messages import (
    PostPages,
    attachment_to_proto,
    comment_to_proto,
    model_to_proto,
    post_to_proto,
    timestamp,
    user_to_proto,
)
from board_server.core import spans
from board_server.core.errors import FieldViolation, InvalidArgument
from board_server.domain.board import Board
from clients.gen.board.v1 import board_pb2, board_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class BoardServicer(board_pb2_grpc.BoardServiceServicer):
    """board.v1.BoardService over the board's use cases (grpc.aio: every method is a coroutine)."""

    def __init__(self, board: Board) -> None:
        self._board = board
        self._post_pages = PostPages()

    # users and sessions

    async def CreateUser(self, request: board_pb2.CreateUserRequest, context: Context) -> board_pb2.User:
        user = await self._board.users.create_user(
            current_caller(), request.name, request.email, request.password, request_id=request.request_id
        )
        return user_to_proto(user)

    async def GetUser(self, request: board_pb2.GetUserRequest, context: Context) -> board_pb2.User:
        return user_to_proto(await self._board.users.get_user(current_caller(), request.id))

    async def ListUsers(
        self, request: board_pb2.ListUsersRequest, context: Context
    ) -> board_pb2.ListUsersResponse:
        page = await self._board.users.list_users(current_caller(), request.page_size, request.page_token)
        response = board_pb2.ListUsersResponse(next_page_token=page.next_page_token)
        for user in page.items:
            user_to_proto(user, response.users.add)
        return response

    async def UpdateUser(self, request: board_pb2.UpdateUserRequest, context: Context) -> board_pb2.User:
        user, paths = request.user, list(request.update_mask.paths)
        updated = await self._board.users.update_user(
            current_caller(),
            user.id,
            paths,
            name=user.name,
            email=user.email,
            password=user.password,
            current_password=request.current_password,
            etag=user.etag,
        )
        return user_to_proto(updated)

    async def DeleteUser(self, request: board_pb2.DeleteUserRequest, context: Context) -> empty_pb2.Empty:
        await self._board.users.delete_user(current_caller(), request.id, etag=request.etag)
        return empty_pb2.Empty()

    async def SignIn(self, request: board_pb2.SignInRequest, context: Context) -> board_pb2.SignInResponse:
        token, expire, user = await self._board.users.sign_in(
            current_caller(), request.email, request.password
        )
        return board_pb2.SignInResponse(
            access_token=token, expire_time=timestamp(expire), user=user_to_proto(user)
        )

    async def SignOut(self, request: board_pb2.SignOutRequest, context: Context) -> empty_pb2.Empty:
        await self._board.users.sign_out(current_caller())
        return empty_pb2.Empty()

    # posts

    async def CreatePost(self, request: board_pb2.CreatePostRequest, context: Context) -> board_pb2.Post:
        post = await self._board.posts.create_post(
            current_caller(), request.user_id, request.title, request.content, request_id=request.request_id
        )
        return post_to_proto(post)

    async def GetPost(self, request: board_pb2.GetPostRequest, context: Context) -> board_pb2.Post:
        return post_to_proto(await self._board.posts.get_post(current_caller(), request.id))

    async def ListPosts(
        self, request: board_pb2.ListPostsRequest, context: Context
    ) -> board_pb2.ListPostsResponse:
        caller = current_caller()
        page = await self._board.posts.list_posts(
            caller,
            user_id=request.user_id,
            page_size=request.page_size,
            page_token=request.page_token,
            label=request.label,
            min_label_fraction=request.min_label_fraction,
            filter_text=request.filter,
            order_by=request.order_by,
        )
        response = self._post_pages.response(page.items, page.next_page_token)
        posts = response.posts
        if request.view == board_pb2.POST_VIEW_WITH_ATTACHMENTS and posts:
            found = await self._board.attachments.attachments_of_posts(caller, [p.id for p in posts])
            for post in posts:
                for attachment in found.get(post.id, ()):
                    attachment_to_proto(attachment, post.attachments.add)
        return response

    async def UpdatePost(self, request: board_pb2.UpdatePostRequest, context: Context) -> board_pb2.Post:
        post, paths = request.post, list(request.update_mask.paths)
        updated = await self._board.posts.update_post(
            current_caller(), post.id, paths, post.title, post.content, etag=post.etag
        )
        return post_to_proto(updated)

    async def DeletePost(self, request: board_pb2.DeletePostRequest, context: Context) -> empty_pb2.Empty:
        await self._board.posts.delete_post(current_caller(), request.id, etag=request.etag)
        return empty_pb2.Empty()

    # comments

    async def CreateComment(
        self, request: board_pb2.CreateCommentRequest, context: Context
    ) -> board_pb2.Comment:
        comment = await self._board.comments.create_comment(
            current_caller(), request.post_id, request.user_id, request.content, request_id=request.request_id
        )
        return comment_to_proto(comment)

    async def GetComment(self, request: board_pb2.GetCommentRequest, context: Context) -> board_pb2.Comment:
        return comment_to_proto(await self._board.comments.get_comment(current_caller(), request.id))

    async def ListComments(
        self, request: board_pb2.ListCommentsRequest, context: Context
    ) -> board_pb2.ListCommentsResponse:
        page = await self._board.comments.list_comments(
            current_caller(), request.post_id, request.page_size, request.page_token
        )
        response = board_pb2.ListCommentsResponse(next_page_token=page.next_page_token)
        for comment in page.items:
            comment_to_proto(comment, response.comments.add)
        return response

    async def UpdateComment(
        self, request: board_pb2.UpdateCommentRequest, context: Context
    ) -> board_pb2.Comment:
        comment, paths = request.comment, list(request.update_mask.paths)
        updated = await self._board.comments.update_comment(
            current_caller(), comment.id, paths, comment.content, etag=comment.etag
        )
        return comment_to_proto(updated)

    async def DeleteComment(
        self, request: board_pb2.DeleteCommentRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._board.comments.delete_comment(current_caller(), request.id, etag=request.etag)
        return empty_pb2.Empty()

    # attachments

    async def AddAttachment(
        self, request: board_pb2.AddAttachmentRequest, context: Context
    ) -> board_pb2.Attachment:
        item = await self._board.attachments.add_attachment(
            current_caller(),
            request.post_id,
            filename=request.filename,
            content_type=request.content_type,
            data=request.data,
            traceparent=spans.current_traceparent(),
            request_id=request.request_id,
        )
        return attachment_to_proto(item)

    async def UploadAttachment(
        self, request_iterator: AsyncIterator[board_pb2.UploadAttachmentRequest], context: Context
    ) -> board_pb2.Attachment:
        caller, uploads = current_caller(), self._board.uploads
        uploads.require_uploader(caller)  # before a byte of the body is read
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("part") != "metadata":
            raise InvalidArgument([FieldViolation("metadata", "the first message must carry the metadata")])
        meta = first.metadata
        upload = await uploads.begin(
            caller,
            meta.post_id,
            filename=meta.filename,
            content_type=meta.content_type,
            size_bytes=meta.size_bytes,
            request_id=meta.request_id,
        )
        async for message in request_iterator:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument(
                    [FieldViolation("chunk", "every message after the first carries a chunk")]
                )
            upload.add(message.chunk)
        return attachment_to_proto(await upload.finish(traceparent=spans.current_traceparent()))

    async def GetAttachment(
        self, request: board_pb2.GetAttachmentRequest, context: Context
    ) -> board_pb2.Attachment:
        return attachment_to_proto(await self._board.attachments.get_attachment(current_caller(), request.id))

    async def ListAttachments(
        self, request: board_pb2.ListAttachmentsRequest, context: Context
    ) -> board_pb2.ListAttachmentsResponse:
        page = await self._board.attachments.list_attachments(
            current_caller(), request.post_id, request.page_size, request.page_token
        )
        response = board_pb2.ListAttachmentsResponse(next_page_token=page.next_page_token)
        for attachment in page.items:
            attachment_to_proto(attachment, response.attachments.add)
        return response

    async def GetAttachmentContent(
        self, request: board_pb2.GetAttachmentContentRequest, context: Context
    ) -> board_pb2.GetAttachmentContentResponse:
        data, content_type = await self._board.attachments.get_content(current_caller(), request.id)
        return board_pb2.GetAttachmentContentResponse(data=data, content_type=content_type)

    async def GetAttachmentMask(
        self, request: board_pb2.GetAttachmentMaskRequest, context: Context
    ) -> board_pb2.GetAttachmentMaskResponse:
        return board_pb2.GetAttachmentMaskResponse(
            png=await self._board.attachments.get_mask(current_caller(), request.id)
        )

    async def DeleteAttachment(
        self, request: board_pb2.DeleteAttachmentRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._board.attachments.delete_attachment(current_caller(), request.id, etag=request.etag)
        return empty_pb2.Empty()

    async def RetryAttachment(
        self, request: board_pb2.RetryAttachmentRequest, context: Context
    ) -> board_pb2.Attachment:
        item = await self._board.attachments.retry_attachment(current_caller(), request.id)
        return attachment_to_proto(item)

    async def WatchAttachment(
        self, request: board_pb2.WatchAttachmentRequest, context: Context
    ) -> AsyncIterator[board_pb2.Attachment]:
        async for item in self._board.attachments.watch_attachment(current_caller(), request.id):
            yield attachment_to_proto(item)

    async def GetAttachmentPreview(
        self, request: board_pb2.GetAttachmentPreviewRequest, context: Context
    ) -> board_pb2.GetAttachmentPreviewResponse:
        preview = await self._board.attachments.get_preview(
            current_caller(),
            request.id,
            max_size=request.max_size,
            overlay=request.overlay,
            content_type=request.content_type,
        )
        return board_pb2.GetAttachmentPreviewResponse(
            data=preview.data, content_type=preview.content_type, width=preview.width, height=preview.height
        )

    async def RetagAttachments(
        self, request: board_pb2.RetagAttachmentsRequest, context: Context
    ) -> board_pb2.RetagAttachmentsResponse:
        count, model = await self._board.retagging.retag(current_caller(), request.filter)
        return board_pb2.RetagAttachmentsResponse(queued_count=count, model=model_to_proto(model.identity))
