// Signing up and in, the account page (name; password changed with the current one), and a new post.

import { board, explain, failure, requestId, session } from "./api";
import { announce, clearErrors, field, formError, h, showErrors } from "./dom";

function page(title: string, ...content: HTMLElement[]): HTMLElement {
  return h("section", { class: "narrow" }, h("h1", { tabindex: -1 }, title), ...content);
}

function submitting(form: HTMLFormElement, action: () => Promise<void>): void {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const button = form.querySelector<HTMLButtonElement>('button[type="submit"]');
    if (button) button.disabled = true;
    try {
      await action();
    } catch (error) {
      showErrors(form, explain(error), failure(error).violations);
    } finally {
      if (button) button.disabled = false;
    }
  });
}

export async function signInView(): Promise<HTMLElement> {
  const email = h("input", { name: "email", type: "email", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { "aria-label": "Sign in" }, field("Email", email), field("Password", password), formError(), h("button", { type: "submit" }, "Sign in"));
  submitting(form, async () => {
    await session.signIn(email.value, password.value);
    announce(`Signed in as ${session.user?.name ?? ""}`);
    window.location.hash = "#/";
  });
  return page("Sign in", form, h("p", {}, "New here? ", h("a", { href: "#/sign-up" }, "Sign up")));
}

export async function signUpView(): Promise<HTMLElement> {
  const name = h("input", { name: "name", autocomplete: "name", required: true, maxlength: 100 });
  const email = h("input", { name: "email", type: "email", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "new-password", required: true, minlength: 8 });
  const form = h(
    "form",
    { "aria-label": "Sign up" },
    field("Name", name),
    field("Email", email),
    field("Password", password, "At least 8 characters, not your email."),
    formError(),
    h("button", { type: "submit" }, "Sign up"),
  );
  const pending = requestId();
  submitting(form, async () => {
    await board.createUser({ name: name.value, email: email.value, password: password.value, requestId: pending });
    await session.signIn(email.value, password.value);
    announce(`Welcome, ${name.value}`);
    window.location.hash = "#/";
  });
  return page("Sign up", form, h("p", {}, "Have an account? ", h("a", { href: "#/sign-in" }, "Sign in")));
}

export async function accountView(): Promise<HTMLElement> {
  await session.load();
  const user = session.user;
  if (!user) return page("Account", h("p", {}, h("a", { href: "#/sign-in" }, "Sign in"), " to see your account."));
  let etag = user.etag;
  const name = h("input", { name: "name", value: user.name, autocomplete: "name", required: true, maxlength: 100 });
  const nameForm = h("form", { "aria-label": "Your name" }, field("Name", name), formError(), h("button", { type: "submit" }, "Save name"));
  submitting(nameForm, async () => {
    const saved = await board.updateUser({ user: { id: user.id, name: name.value, etag }, updateMask: { paths: ["name"] } });
    etag = saved.etag;
    session.set(saved);
    announce("Name saved");
  });
  const current = h("input", { name: "current_password", type: "password", autocomplete: "current-password", required: true });
  const fresh = h("input", { name: "password", type: "password", autocomplete: "new-password", required: true, minlength: 8 });
  const again = h("input", { name: "again", type: "password", autocomplete: "new-password", required: true });
  const passwordForm = h(
    "form",
    { "aria-label": "Change password" },
    field("Current password", current),
    field("New password", fresh, "At least 8 characters. Your other sessions end."),
    field("New password again", again),
    formError(),
    h("button", { type: "submit" }, "Change password"),
  );
  submitting(passwordForm, async () => {
    if (fresh.value !== again.value) {
      showErrors(passwordForm, "", [{ field: "again", description: "does not match the new password" }]);
      return;
    }
    const saved = await board.updateUser({
      user: { id: user.id, password: fresh.value, etag },
      updateMask: { paths: ["password"] },
      currentPassword: current.value,
    });
    etag = saved.etag;
    passwordForm.reset();
    announce("Password changed");
  });
  return page(
    "Account",
    h("dl", { class: "facts" }, h("dt", {}, "Email"), h("dd", {}, user.email), h("dt", {}, "Role"), h("dd", {}, user.admin ? "admin" : "member")),
    h("h2", {}, "Name"),
    nameForm,
    h("h2", {}, "Password"),
    passwordForm,
  );
}

export async function newPostView(): Promise<HTMLElement> {
  if (!session.user) return page("New post", h("p", {}, h("a", { href: "#/sign-in" }, "Sign in"), " to write a post."));
  const title = h("input", { name: "title", required: true, maxlength: 200 });
  const content = h("textarea", { name: "content", rows: 8, required: true, maxlength: 10000 });
  const form = h("form", { "aria-label": "New post" }, field("Title", title), field("Text", content), formError(), h("button", { type: "submit" }, "Publish"));
  const pending = requestId(); // a retry of this post reuses it: the board creates it once
  submitting(form, async () => {
    const post = await board.createPost({ title: title.value, content: content.value, requestId: pending });
    announce("Post published; add photos to it here");
    window.location.hash = `#/posts/${post.id}`;
  });
  return page("New post", form);
}
