// The feed: posts a page at a time, searched with the filter language and ordered by order_by; a filter the
// board cannot parse is explained next to its box (google.rpc.BadRequest from ListPosts).

import { Code } from "@connectrpc/connect";
import { AttachmentStatus, type Post, PostView } from "./gen/board/v1/board_pb";
import { authorName, board, dateOf, failure, session } from "./api";
import { clearErrors, field, formError, h, type Screen, showErrors, when } from "./dom";

const PAGE_SIZE = 10;
const ORDERS = ["id", "create_time desc", "create_time", "label.dog desc", "label.person desc"];

function address(filter: string, order: string, page = ""): string {
  const query = new URLSearchParams();
  if (filter) query.set("filter", filter);
  if (order) query.set("order", order);
  if (page) query.set("page", page);
  const text = query.toString();
  return text ? `#/?${text}` : "#/";
}

function searchForm(filter: string, order: string): HTMLFormElement {
  const filterBox = h("input", { name: "filter", type: "search", value: filter, autocomplete: "off", spellcheck: "false" });
  const orderBox = h("input", { name: "order_by", value: order, list: "orders", autocomplete: "off" });
  const form = h(
    "form",
    { class: "search", role: "search", "aria-label": "Search posts" },
    field("Filter", filterBox, 'e.g. label.dog >= 0.2 AND NOT label.car, or create_time > "2026-01-01T00:00:00Z"'),
    field("Order by", orderBox, "e.g. create_time desc, or label.dog desc"),
    h("datalist", { id: "orders" }, ORDERS.map((o) => h("option", { value: o }))),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Search"), filter || order ? h("a", { href: "#/" }, "Clear") : null),
    formError(),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    window.location.hash = address(filterBox.value.trim(), orderBox.value.trim());
  });
  return form;
}

function labelsOf(post: Post): string[] {
  const best = new Map<string, number>();
  for (const attachment of post.attachments) {
    if (attachment.status !== AttachmentStatus.TAGGED) continue;
    for (const label of attachment.labels) {
      if (label.name !== "background") best.set(label.name, Math.max(best.get(label.name) ?? 0, label.fraction));
    }
  }
  return [...best.entries()].sort((a, b) => b[1] - a[1]).map(([name, fraction]) => `${name} ${Math.round(fraction * 100)} %`);
}

function card(post: Post): HTMLElement {
  const author = h("span", { class: "author" }, "…");
  void authorName(post.userId).then((name) => {
    author.textContent = name;
  });
  const labels = labelsOf(post);
  const pending = post.attachments.filter((a) => a.status === AttachmentStatus.PENDING).length;
  const excerpt = post.content.length > 220 ? `${post.content.slice(0, 220)}…` : post.content;
  return h(
    "li",
    {},
    h(
      "article",
      { class: "card", "aria-labelledby": `post-${post.id}` },
      h("h2", { id: `post-${post.id}` }, h("a", { href: `#/posts/${post.id}` }, post.title)),
      h("p", { class: "meta" }, "by ", author, " · ", h("time", {}, when(dateOf(post.createTime)))),
      h("p", {}, excerpt),
      post.attachments.length
        ? h(
            "p",
            { class: "photos-line" },
            `${post.attachments.length} photo${post.attachments.length === 1 ? "" : "s"}`,
            pending ? ` (${pending} being tagged)` : "",
            labels.length ? ": " : "",
            labels.length ? h("span", { class: "labels" }, labels.join(", ")) : null,
          )
        : null,
    ),
  );
}

export async function feedView(screen: Screen): Promise<HTMLElement> {
  const filter = screen.params.get("filter") ?? "";
  const order = screen.params.get("order") ?? "";
  const page = screen.params.get("page") ?? "";
  const form = searchForm(filter, order);
  const section = h(
    "section",
    { "aria-labelledby": "feed-title" },
    h("h1", { id: "feed-title", tabindex: -1 }, filter ? "Search results" : "Posts"),
    session.user ? h("p", {}, h("a", { href: "#/new", class: "button" }, "Write a post")) : null,
    form,
  );
  try {
    const answer = await board.listPosts(
      { filter, orderBy: order, pageSize: PAGE_SIZE, pageToken: page, view: PostView.WITH_ATTACHMENTS },
      { signal: screen.signal },
    );
    clearErrors(form);
    section.append(
      answer.posts.length
        ? h("ul", { class: "posts", "aria-label": "Posts" }, answer.posts.map(card))
        : h("p", { role: "status" }, filter ? "No post matches this filter." : "No posts yet."),
      h(
        "nav",
        { class: "pager", "aria-label": "Pages" },
        page ? h("a", { href: address(filter, order) }, "First page") : null,
        answer.nextPageToken ? h("a", { href: address(filter, order, answer.nextPageToken), rel: "next" }, "Next page") : null,
      ),
    );
  } catch (error) {
    const found = failure(error);
    if (found.code !== Code.InvalidArgument) throw error;
    // The board's parser says what is wrong with the filter or the order, field by field.
    showErrors(form, found.message, found.violations.length ? found.violations : [{ field: "filter", description: found.message }]);
  }
  return section;
}
