// Small DOM helpers: elements from a tag, attributes and children; the live region; form errors.

import type { Violation } from "./api";

/** What a screen gets: the query of its address, and a signal that aborts when the reader leaves it. */
export interface Screen {
  params: URLSearchParams;
  signal: AbortSignal;
}

export type Child = Node | string | null | undefined | false;
type Attribute = string | number | boolean | undefined | ((event: Event) => void);

/** An element with attributes (`on…` ones become listeners, booleans presence) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Record<string, Attribute> = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (typeof value === "function") {
      element.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else if (value !== false && value !== undefined) {
      element.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      element.append(child);
    }
  }
  return element;
}

/** Replace an element's children (null, undefined and false are left out). */
export function fill(element: Element, ...children: Child[]): void {
  element.replaceChildren(...children.filter((c): c is Node | string => c !== null && c !== undefined && c !== false));
}

/** Say something to screen readers (and show it in the status line). */
export function announce(text: string): void {
  const region = document.getElementById("announcer");
  if (region) {
    region.textContent = "";
    window.setTimeout(() => {
      region.textContent = text;
    }, 50);
  }
}

let ids = 0;
/** A document-unique id with a readable prefix. */
export function uid(prefix: string): string {
  ids += 1;
  return `${prefix}-${ids}`;
}

/** A labelled input or textarea with room for its error; returns the wrapper and the control. */
export function field(
  label: string,
  control: HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement,
  help?: string,
): HTMLElement {
  control.id ||= uid(control.name || "field");
  const helpId = help ? `${control.id}-help` : undefined;
  if (helpId) control.setAttribute("aria-describedby", helpId);
  return h(
    "div",
    { class: "field" },
    h("label", { for: control.id }, label),
    control,
    help ? h("p", { class: "help", id: helpId }, help) : null,
  );
}

/** Show a call's field violations next to the form's controls (by name), the rest at the top. */
export function showErrors(form: HTMLFormElement, message: string, violations: Violation[]): void {
  clearErrors(form);
  const general: string[] = [];
  for (const violation of violations) {
    const control = form.querySelector<HTMLElement>(`[name="${CSS.escape(violation.field)}"]`);
    if (!control) {
      general.push(`${violation.field}: ${violation.description}`);
      continue;
    }
    const errorId = `${control.id}-error`;
    control.setAttribute("aria-invalid", "true");
    const described = control.getAttribute("aria-describedby");
    control.setAttribute("aria-describedby", described ? `${described} ${errorId}` : errorId);
    control.insertAdjacentElement(
      "afterend",
      h("p", { class: "field-error", id: errorId }, violation.description),
    );
  }
  const box = form.querySelector<HTMLElement>(".form-error");
  if (box) {
    box.textContent = violations.length && !general.length ? "Please correct the marked fields." : message;
    if (general.length && violations.length) box.textContent = general.join("; ");
    box.hidden = false;
  }
  const first = form.querySelector<HTMLElement>('[aria-invalid="true"]');
  first?.focus();
}

/** Remove what showErrors added. */
export function clearErrors(form: HTMLFormElement): void {
  for (const error of Array.from(form.querySelectorAll(".field-error"))) error.remove();
  for (const control of Array.from(form.querySelectorAll<HTMLElement>('[aria-invalid="true"]'))) {
    control.removeAttribute("aria-invalid");
    const described = (control.getAttribute("aria-describedby") ?? "")
      .split(" ")
      .filter((id) => id && !id.endsWith("-error"))
      .join(" ");
    if (described) control.setAttribute("aria-describedby", described);
    else control.removeAttribute("aria-describedby");
  }
  const box = form.querySelector<HTMLElement>(".form-error");
  if (box) {
    box.hidden = true;
    box.textContent = "";
  }
}

/** The error line of a form (announced when it appears). */
export function formError(): HTMLElement {
  return h("p", { class: "form-error", role: "alert", hidden: true });
}

/** A date as people read it. */
export function when(date: Date | undefined): string {
  return date ? date.toLocaleString() : "";
}
