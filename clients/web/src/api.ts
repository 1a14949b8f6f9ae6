// board.v1 over Connect from this page's own origin, the session, and the browser's photo upload.
//
// The access token never reaches this script: SignIn asks the board (header Board-Session: cookie) to keep it
// in an HttpOnly, SameSite=Strict cookie, which the browser sends with every call to this origin.

import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { errorFromJson } from "@connectrpc/connect/protocol-connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import {
  type Attachment,
  AttachmentSchema,
  BoardService,
  type User,
} from "./gen/board/v1/board_pb";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb";

export const board = createClient(
  BoardService,
  createConnectTransport({ baseUrl: window.location.origin, useBinaryFormat: true }),
);

export interface Violation {
  field: string;
  description: string;
}

/** A failed call as the page shows it: its code, its message, and the fields it blames. */
export interface Failure {
  code: Code;
  message: string;
  violations: Violation[];
}

export function failure(error: unknown): Failure {
  const connect = ConnectError.from(error);
  const violations = connect
    .findDetails(BadRequestSchema)
    .flatMap((request) => request.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
  return { code: connect.code, message: connect.rawMessage, violations };
}

/** What a person is told about a failure. */
export function explain(error: unknown): string {
  const { code, message } = failure(error);
  switch (code) {
    case Code.Unauthenticated:
      return "Please sign in first.";
    case Code.PermissionDenied:
      return "You may not do that: only the author (or an admin) may.";
    case Code.Aborted:
      return "Someone changed this since you opened it. Reload the page to see the new version.";
    case Code.Unavailable:
    case Code.DeadlineExceeded:
      return "The board is busy or unreachable; try again in a moment.";
    default:
      return message || "Something went wrong.";
  }
}

/** A UUID4 for request_id (AIP-155): a retry of the same action reuses it. */
export function requestId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function dateOf(timestamp: Timestamp | undefined): Date | undefined {
  return timestamp ? timestampDate(timestamp) : undefined;
}

// --- the session -------------------------------------------------------------------------------------------

type Listener = (user: User | null) => void;
let current: User | null = null;
const listeners: Listener[] = [];

export const session = {
  get user(): User | null {
    return current;
  },
  onChange(listener: Listener): void {
    listeners.push(listener);
  },
  set(user: User | null): void {
    current = user;
    for (const listener of listeners) listener(user);
  },
  /** Who the cookie belongs to (null: nobody signed in, or the session ended). */
  async load(): Promise<void> {
    try {
      session.set(await board.getUser({ id: 0n }));
    } catch (error) {
      if (failure(error).code !== Code.Unauthenticated) throw error;
      session.set(null);
    }
  },
  async signIn(email: string, password: string): Promise<void> {
    const answer = await board.signIn({ email, password }, { headers: { "Board-Session": "cookie" } });
    session.set(answer.user ?? null);
  },
  async signOut(): Promise<void> {
    try {
      await board.signOut({});
    } finally {
      session.set(null);
    }
  },
  /** May the signed-in user change what ``userId`` wrote? */
  mayChange(userId: bigint): boolean {
    return current !== null && (current.id === userId || current.admin);
  },
};

// --- authors -----------------------------------------------------------------------------------------------

const authors = new Map<bigint, Promise<string>>();

/** A user's display name (asked once per page load). */
export function authorName(userId: bigint): Promise<string> {
  let found = authors.get(userId);
  if (!found) {
    found = board.getUser({ id: userId }).then(
      (user) => user.name,
      () => `user ${userId}`,
    );
    authors.set(userId, found);
  }
  return found;
}

// --- images ------------------------------------------------------------------------------------------------

/** An object URL of an attachment's preview (revoked when ``signal`` aborts). */
export async function previewUrl(
  id: bigint,
  maxSize: number,
  overlay: boolean,
  signal: AbortSignal,
): Promise<string> {
  const preview = await board.getAttachmentPreview({ id, maxSize, overlay }, { signal });
  const url = URL.createObjectURL(new Blob([new Uint8Array(preview.data)], { type: preview.contentType }));
  signal.addEventListener("abort", () => URL.revokeObjectURL(url), { once: true });
  return url;
}

// --- the upload --------------------------------------------------------------------------------------------

/** POST the file's bytes to the board's upload endpoint, reporting progress (0..1); the new attachment. */
export function uploadPhoto(postId: bigint, file: File, onProgress: (fraction: number) => void): Promise<Attachment> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const query = new URLSearchParams({ filename: file.name, request_id: requestId() });
    xhr.open("POST", `/v1/posts/${postId}/attachments?${query}`);
    xhr.responseType = "text";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      let body: JsonValue = null;
      try {
        body = JSON.parse(xhr.responseText) as JsonValue;
      } catch {
        // not JSON: a proxy's page, say; reported below by its status
      }
      if (xhr.status === 200 && body !== null) {
        onProgress(1);
        resolve(fromJson(AttachmentSchema, body));
        return;
      }
      const fallback = new ConnectError(`upload failed (HTTP ${xhr.status})`, Code.Unknown);
      reject(body !== null ? errorFromJson(body, undefined, fallback) : fallback);
    });
    xhr.addEventListener("error", () => reject(new ConnectError("the upload was cut off", Code.Unavailable)));
    xhr.send(file);
  });
}
