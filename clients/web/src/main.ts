// The web app: a hash router over the board's screens, the navigation, and focus on every new screen.

import "./style.css";
import { explain, session } from "./api";
import { accountView, newPostView, signInView, signUpView } from "./account";
import { announce, h, type Screen } from "./dom";
import { feedView } from "./feed";
import { postView } from "./post";

type View = (match: RegExpMatchArray, screen: Screen) => Promise<HTMLElement>;

const routes: [RegExp, View][] = [
  [/^\/$/, (_, screen) => feedView(screen)],
  [/^\/posts\/(\d+)$/, (match, screen) => postView(BigInt(match[1]), screen)],
  [/^\/new$/, () => newPostView()],
  [/^\/sign-in$/, () => signInView()],
  [/^\/sign-up$/, () => signUpView()],
  [/^\/account$/, () => accountView()],
];

let leaving = new AbortController();

async function render(): Promise<void> {
  const hash = window.location.hash || "#/";
  if (!hash.startsWith("#/")) return; // an in-page anchor, not a screen
  const [path, query] = hash.slice(1).split("?", 2);
  leaving.abort();
  leaving = new AbortController();
  const screen: Screen = { params: new URLSearchParams(query ?? ""), signal: leaving.signal };
  const main = document.getElementById("main") as HTMLElement;
  main.setAttribute("aria-busy", "true");
  let view: HTMLElement;
  try {
    const route = routes.find(([pattern]) => pattern.test(path));
    view = route
      ? await route[1](path.match(route[0]) as RegExpMatchArray, screen)
      : h("section", {}, h("h1", { tabindex: -1 }, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the posts")));
  } catch (error) {
    view = h("section", {}, h("h1", { tabindex: -1 }, "Something went wrong"), h("p", { role: "alert" }, explain(error)));
  }
  if (screen.signal.aborted) return; // the reader went on while this one loaded
  main.replaceChildren(view);
  main.removeAttribute("aria-busy");
  const heading = main.querySelector("h1");
  document.title = heading ? `${heading.textContent} · Board` : "Board";
  heading?.focus();
}

function renderNav(): void {
  const user = session.user;
  const nav = document.getElementById("nav") as HTMLElement;
  const signOut = async (): Promise<void> => {
    await session.signOut();
    announce("Signed out");
    window.location.hash = "#/";
    void render();
  };
  nav.replaceChildren(
    h(
      "ul",
      {},
      h("li", { class: "brand" }, h("a", { href: "#/" }, "Board")),
      h("li", {}, h("a", { href: "#/" }, "Posts")),
      user ? h("li", {}, h("a", { href: "#/new" }, "New post")) : null,
      user ? h("li", {}, h("a", { href: "#/account" }, "Account")) : null,
      user ? h("li", { class: "who" }, `Signed in as ${user.name}`) : null,
      user
        ? h("li", {}, h("button", { type: "button", class: "link", onclick: () => void signOut() }, "Sign out"))
        : h("li", {}, h("a", { href: "#/sign-in" }, "Sign in")),
      user ? null : h("li", {}, h("a", { href: "#/sign-up" }, "Sign up")),
    ),
  );
}

async function start(): Promise<void> {
  document.querySelector(".skip-link")?.addEventListener("click", (event) => {
    event.preventDefault();
    document.getElementById("main")?.focus();
  });
  session.onChange(renderNav);
  try {
    await session.load();
  } catch (error) {
    announce(explain(error));
  }
  renderNav();
  window.addEventListener("hashchange", () => void render());
  await render();
}

void start();
