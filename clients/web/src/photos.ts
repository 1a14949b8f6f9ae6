// A post's photos: each with its preview, its tagging status kept live through WatchAttachment (server
// streaming over Connect), the overlay preview with its legend; and the drag-and-drop upload with progress.

import { Code } from "@connectrpc/connect";
import { type Attachment, AttachmentStatus } from "./gen/board/v1/board_pb";
import { VOC_COLOURS } from "./gen/voc";
import { board, explain, failure, previewUrl, uploadPhoto } from "./api";
import { announce, h } from "./dom";

const PREVIEW_SIZE = 640;

function percent(fraction: number): string {
  return `${fraction >= 0.1 ? Math.round(fraction * 100) : (fraction * 100).toFixed(1)} %`;
}

function statusText(attachment: Attachment): string {
  switch (attachment.status) {
    case AttachmentStatus.PENDING:
      return "Tagging… (pending)";
    case AttachmentStatus.TAGGED: {
      const found = attachment.labels.filter((l) => l.name !== "background").map((l) => `${l.name} ${percent(l.fraction)}`);
      return `Tagged: ${found.length ? found.join(", ") : "background only"}${attachment.model?.untrained ? " (untrained model)" : ""}`;
    }
    case AttachmentStatus.FAILED:
      return `Tagging failed: ${attachment.failureReason}`;
    default:
      return "Unknown status";
  }
}

function statusName(status: AttachmentStatus): string {
  return AttachmentStatus[status] ?? "UNSPECIFIED";
}

/** One photo of a post, kept up to date while the page is open. */
export class PhotoCard {
  readonly element: HTMLElement;
  private attachment: Attachment;
  private readonly image: HTMLImageElement;
  private readonly status: HTMLElement;
  private readonly overlayButton: HTMLButtonElement;
  private readonly legend: HTMLElement;
  private readonly actions: HTMLElement;
  private overlay = false;
  private images: AbortController;

  constructor(
    attachment: Attachment,
    private readonly canChange: boolean,
    private readonly signal: AbortSignal,
    private readonly onDeleted: (card: PhotoCard) => void,
  ) {
    this.attachment = attachment;
    this.images = this.childSignal();
    this.image = h("img", { alt: `Photo ${attachment.filename}`, loading: "lazy", width: attachment.width, height: attachment.height });
    this.status = h("p", { class: "status", role: "status" });
    this.overlayButton = h("button", { type: "button", "aria-pressed": "false", onclick: () => void this.toggleOverlay() }, "Show overlay");
    this.legend = h("ul", { class: "legend", "aria-label": `Legend of ${attachment.filename}`, hidden: true });
    this.actions = h("div", { class: "actions" }, this.overlayButton);
    if (canChange) {
      this.actions.append(h("button", { type: "button", class: "danger", onclick: () => void this.remove() }, "Delete photo"));
    }
    this.element = h(
      "li",
      { class: "photo" },
      h("figure", {}, this.image, h("figcaption", {}, attachment.filename)),
      this.status,
      this.legend,
      this.actions,
    );
    this.show(attachment);
    void this.loadImage();
    if (attachment.status === AttachmentStatus.PENDING) void this.watch();
  }

  private childSignal(): AbortController {
    const controller = new AbortController();
    this.signal.addEventListener("abort", () => controller.abort(), { once: true });
    return controller;
  }

  private show(attachment: Attachment): void {
    this.attachment = attachment;
    this.element.dataset.status = statusName(attachment.status);
    this.element.dataset.attachmentId = String(attachment.id);
    this.status.textContent = statusText(attachment);
    this.overlayButton.disabled = attachment.status !== AttachmentStatus.TAGGED;
    const retry = this.actions.querySelector(".retry");
    if (attachment.status === AttachmentStatus.FAILED && this.canChange && !retry) {
      this.actions.append(h("button", { type: "button", class: "retry", onclick: () => void this.retry() }, "Tag again"));
    } else if (attachment.status !== AttachmentStatus.FAILED) {
      retry?.remove();
    }
  }

  private async loadImage(): Promise<void> {
    this.images.abort();
    this.images = this.childSignal();
    try {
      this.image.src = await previewUrl(this.attachment.id, PREVIEW_SIZE, this.overlay, this.images.signal);
      this.image.alt = this.overlay
        ? `Photo ${this.attachment.filename} with the segmentation overlay`
        : `Photo ${this.attachment.filename}`;
    } catch (error) {
      if (!this.images.signal.aborted) this.status.textContent = `${statusText(this.attachment)} (no preview: ${explain(error)})`;
    }
  }

  /** Follow the attachment until it is TAGGED or FAILED (the board ends the stream then). */
  private async watch(): Promise<void> {
    const pending = (): boolean => this.attachment.status === AttachmentStatus.PENDING;
    while (!this.signal.aborted && pending()) {
      try {
        for await (const changed of board.watchAttachment({ id: this.attachment.id }, { signal: this.signal })) {
          const was = this.attachment.status;
          this.show(changed);
          if (was !== changed.status && changed.status !== AttachmentStatus.PENDING) {
            announce(`${changed.filename}: ${statusText(changed)}`);
          }
        }
      } catch (error) {
        if (this.signal.aborted || failure(error).code === Code.NotFound) return;
        await new Promise((resolve) => window.setTimeout(resolve, 2000)); // then watch again
      }
    }
  }

  private async toggleOverlay(): Promise<void> {
    this.overlay = !this.overlay;
    this.overlayButton.setAttribute("aria-pressed", String(this.overlay));
    this.overlayButton.textContent = this.overlay ? "Hide overlay" : "Show overlay";
    this.legend.replaceChildren(
      ...this.attachment.labels.map((label) =>
        h(
          "li",
          {},
          swatch(label.name),
          h("span", { class: "label-name" }, label.name),
          ` ${percent(label.fraction)}`,
        ),
      ),
    );
    this.legend.hidden = !this.overlay;
    await this.loadImage();
  }

  private async retry(): Promise<void> {
    try {
      this.show(await board.retryAttachment({ id: this.attachment.id }));
      void this.watch();
    } catch (error) {
      announce(explain(error));
    }
  }

  private async remove(): Promise<void> {
    try {
      await board.deleteAttachment({ id: this.attachment.id, etag: this.attachment.etag });
      this.images.abort();
      this.onDeleted(this);
      announce(`Deleted ${this.attachment.filename}`);
    } catch (error) {
      announce(explain(error));
    }
  }
}

function swatch(name: string): HTMLElement {
  const element = h("span", { class: "swatch", "aria-hidden": "true" });
  element.style.backgroundColor = VOC_COLOURS[name] ?? "#808080";
  return element;
}

/** The drop zone (also a file chooser, for keyboards) and the progress of each upload. */
export function uploadZone(postId: bigint, added: (attachment: Attachment) => void): HTMLElement {
  const input = h("input", { type: "file", accept: "image/*", multiple: true, class: "visually-hidden", id: `photos-${postId}` });
  const list = h("ul", { class: "uploads", "aria-label": "Uploads" });
  const upload = async (file: File): Promise<void> => {
    const bar = h("progress", { max: 100, value: 0, "aria-label": `Uploading ${file.name}` });
    const text = h("span", { class: "upload-text" }, "0 %");
    const item = h("li", {}, h("span", { class: "upload-name" }, file.name), bar, text);
    list.append(item);
    try {
      const attachment = await uploadPhoto(postId, file, (fraction) => {
        bar.value = Math.round(fraction * 100);
        text.textContent = `${Math.round(fraction * 100)} %`;
      });
      item.remove();
      added(attachment);
      announce(`Uploaded ${file.name}; tagging it now`);
    } catch (error) {
      text.textContent = `Failed: ${explain(error)}`;
      item.classList.add("failed");
    }
  };
  const take = (files: FileList | null): void => {
    for (const file of Array.from(files ?? [])) void upload(file);
  };
  input.addEventListener("change", () => {
    take(input.files);
    input.value = "";
  });
  const zone = h(
    "div",
    { class: "dropzone", "data-dropzone": true },
    h("p", {}, "Drop photos here, or "),
    h("label", { for: input.id, class: "button" }, "Choose photos"),
    input,
  );
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    take(event.dataTransfer?.files ?? null);
  });
  return h("section", { "aria-labelledby": `add-photos-${postId}`, class: "add-photos" }, h("h3", { id: `add-photos-${postId}` }, "Add photos"), zone, list);
}
