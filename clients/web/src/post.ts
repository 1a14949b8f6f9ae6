// One post: its text (edited and deleted by its author, with the etag it was read at), its photos, and its
// comments (each edited and deleted by its author the same way).

import { Code } from "@connectrpc/connect";
import type { Attachment, Comment, Post } from "./gen/board/v1/board_pb";
import { authorName, board, dateOf, explain, failure, requestId, session } from "./api";
import { announce, clearErrors, field, fill, formError, h, type Screen, showErrors, when } from "./dom";
import { PhotoCard, uploadZone } from "./photos";

function author(userId: bigint): HTMLElement {
  const name = h("span", { class: "author" }, "…");
  void authorName(userId).then((text) => {
    name.textContent = text;
  });
  return name;
}

/** A "really delete?" pair of buttons in place of the delete button. */
function confirmDelete(what: string, button: HTMLButtonElement, remove: () => Promise<void>): void {
  const question = h("span", { class: "confirm", role: "group", "aria-label": `Delete ${what}?` });
  const yes = h("button", { type: "button", class: "danger" }, `Yes, delete ${what}`);
  const no = h("button", { type: "button" }, "Keep it");
  question.append(`Delete ${what}? `, yes, " ", no);
  button.replaceWith(question);
  yes.focus();
  no.addEventListener("click", () => {
    question.replaceWith(button);
    button.focus();
  });
  yes.addEventListener("click", () => void remove());
}

function postText(post: Post, onEdited: (post: Post) => void): HTMLElement {
  const wrapper = h("div", { class: "post-text" });
  const render = (current: Post): void => {
    const edit = h("button", { type: "button" }, "Edit post");
    const remove = h("button", { type: "button", class: "danger" }, "Delete post");
    const status = h("p", { class: "form-error", role: "alert", hidden: true });
    edit.addEventListener("click", () => wrapper.replaceChildren(editor(current)));
    remove.addEventListener("click", () =>
      confirmDelete("this post", remove, async () => {
        try {
          await board.deletePost({ id: current.id, etag: current.etag });
          announce("Post deleted");
          window.location.hash = "#/";
        } catch (error) {
          status.textContent = explain(error);
          status.hidden = false;
        }
      }),
    );
    fill(
      wrapper,
      h("div", { class: "content" }, ...current.content.split("\n").map((line) => h("p", {}, line))),
      h(
        "p",
        { class: "meta" },
        "by ",
        author(current.userId),
        " · ",
        h("time", {}, when(dateOf(current.createTime))),
        current.updateTime && current.createTime && current.updateTime.seconds !== current.createTime.seconds ? " · edited" : "",
      ),
      session.mayChange(current.userId) ? h("div", { class: "actions", "aria-label": "Post actions", role: "group" }, edit, remove) : null,
      status,
    );
  };
  const editor = (current: Post): HTMLFormElement => {
    const title = h("input", { name: "title", value: current.title, required: true, maxlength: 200 });
    const content = h("textarea", { name: "content", rows: 6, required: true, maxlength: 10000 });
    content.value = current.content;
    const form = h(
      "form",
      { class: "editor", "aria-label": "Edit post" },
      field("Title", title),
      field("Text", content),
      formError(),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Save"), h("button", { type: "button", class: "cancel" }, "Cancel")),
    );
    form.querySelector(".cancel")?.addEventListener("click", () => render(current));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearErrors(form);
      try {
        const saved = await board.updatePost({
          post: { id: current.id, title: title.value, content: content.value, etag: current.etag },
          updateMask: { paths: ["title", "content"] },
        });
        onEdited(saved);
        render(saved);
        announce("Post saved");
      } catch (error) {
        const found = failure(error);
        showErrors(form, explain(error), found.violations);
      }
    });
    window.setTimeout(() => title.focus(), 0);
    return form;
  };
  render(post);
  return wrapper;
}

function commentItem(comment: Comment, onGone: () => void): HTMLElement {
  const item = h("li", { class: "comment" });
  const render = (current: Comment): void => {
    const edit = h("button", { type: "button" }, "Edit");
    const remove = h("button", { type: "button", class: "danger" }, "Delete");
    edit.setAttribute("aria-label", "Edit comment");
    remove.setAttribute("aria-label", "Delete comment");
    edit.addEventListener("click", () => item.replaceChildren(editor(current)));
    remove.addEventListener("click", () =>
      confirmDelete("this comment", remove, async () => {
        try {
          await board.deleteComment({ id: current.id, etag: current.etag });
          announce("Comment deleted");
          onGone();
        } catch (error) {
          announce(explain(error));
        }
      }),
    );
    fill(
      item,
      h("p", { class: "meta" }, author(current.userId), " · ", h("time", {}, when(dateOf(current.createTime)))),
      h("p", {}, current.content),
      session.mayChange(current.userId) ? h("div", { class: "actions", role: "group", "aria-label": "Comment actions" }, edit, remove) : null,
    );
  };
  const editor = (current: Comment): HTMLFormElement => {
    const content = h("textarea", { name: "content", rows: 3, required: true, maxlength: 2000 });
    content.value = current.content;
    const form = h(
      "form",
      { "aria-label": "Edit comment" },
      field("Comment", content),
      formError(),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Save comment"), h("button", { type: "button", class: "cancel" }, "Cancel")),
    );
    form.querySelector(".cancel")?.addEventListener("click", () => render(current));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const saved = await board.updateComment({
          comment: { id: current.id, content: content.value, etag: current.etag },
          updateMask: { paths: ["content"] },
        });
        render(saved);
        announce("Comment saved");
      } catch (error) {
        showErrors(form, explain(error), failure(error).violations);
      }
    });
    window.setTimeout(() => content.focus(), 0);
    return form;
  };
  render(comment);
  return item;
}

async function comments(post: Post, screen: Screen): Promise<HTMLElement> {
  const list = h("ol", { class: "comments", "aria-label": "Comments" });
  const more = h("button", { type: "button", hidden: true }, "More comments");
  let token = "";
  const load = async (): Promise<void> => {
    const page = await board.listComments({ postId: post.id, pageSize: 20, pageToken: token }, { signal: screen.signal });
    for (const comment of page.comments) {
      const item: HTMLElement = commentItem(comment, () => item.remove());
      list.append(item);
    }
    token = page.nextPageToken;
    more.hidden = !token;
  };
  more.addEventListener("click", () => void load());
  await load();
  const section = h("section", { "aria-labelledby": "comments-title" }, h("h2", { id: "comments-title" }, "Comments"), list, more);
  if (session.user) {
    const content = h("textarea", { name: "content", rows: 3, required: true, maxlength: 2000 });
    const form = h("form", { class: "new-comment" }, field("Add a comment", content), formError(), h("button", { type: "submit" }, "Comment"));
    let pending = requestId(); // a retry of the same comment reuses it
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearErrors(form);
      try {
        const made = await board.createComment({ postId: post.id, content: content.value, requestId: pending });
        const item: HTMLElement = commentItem(made, () => item.remove());
        list.append(item);
        content.value = "";
        pending = requestId();
        announce("Comment added");
      } catch (error) {
        showErrors(form, explain(error), failure(error).violations);
      }
    });
    section.append(form);
  } else {
    section.append(h("p", {}, h("a", { href: "#/sign-in" }, "Sign in"), " to comment."));
  }
  return section;
}

async function photos(post: Post, screen: Screen): Promise<HTMLElement> {
  const canChange = session.mayChange(post.userId);
  const list = h("ul", { class: "photos", "aria-label": "Photos" });
  const add = (attachment: Attachment): void => {
    const card = new PhotoCard(attachment, canChange, screen.signal, (gone) => gone.element.remove());
    list.append(card.element);
  };
  let token = "";
  do {
    const page = await board.listAttachments({ postId: post.id, pageToken: token }, { signal: screen.signal });
    page.attachments.forEach(add);
    token = page.nextPageToken;
  } while (token);
  return h(
    "section",
    { "aria-labelledby": "photos-title" },
    h("h2", { id: "photos-title" }, "Photos"),
    list,
    canChange ? uploadZone(post.id, add) : null,
  );
}

export async function postView(id: bigint, screen: Screen): Promise<HTMLElement> {
  let post: Post;
  try {
    post = await board.getPost({ id }, { signal: screen.signal });
  } catch (error) {
    if (failure(error).code !== Code.NotFound) throw error;
    return h("section", {}, h("h1", { tabindex: -1 }, "Post not found"), h("p", {}, h("a", { href: "#/" }, "Back to the posts")));
  }
  const heading = h("h1", { tabindex: -1, id: "post-title" }, post.title);
  const [photoSection, commentSection] = await Promise.all([photos(post, screen), comments(post, screen)]);
  return h(
    "article",
    { class: "post", "aria-labelledby": "post-title" },
    heading,
    postText(post, (saved) => {
      heading.textContent = saved.title;
      document.title = `${saved.title} · Board`;
    }),
    photoSection,
    commentSection,
  );
}
