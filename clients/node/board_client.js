'use strict';
// A small promise-based client for board.v1.BoardService that loads protos/board/v1/board.proto at run
// time (no generated code), so it always speaks the contract in the repository.
//
//   const client = new BoardClient('127.0.0.1:50051');                 // { rootCerts } for a private CA
//   await client.call('CreateUser', { name, email, password });         // sign-up is anonymous
//   await client.signIn(email, password);                               // later calls carry the token
//   const added = await client.upload(postId, 'photo.jpg', bytes);      // UploadAttachment, in chunks
//   const tagged = await client.waitForTagging(added.id);               // WatchAttachment, no polling
//
// The access token goes with every call as `authorization: Bearer <token>` metadata; it is never logged.
// The channel is TLS unless the target is loopback (127.0.0.0/8, ::1, localhost, a Unix socket); `plaintext:
// true` opts out (a trusted network), `tls: true` opts in on loopback too.
//
// Safe retries: every create gets a request_id (a fresh UUID4 unless the request has one), and the channel
// retries as clients/service_config.json says (UNAVAILABLE for every call, DEADLINE_EXCEEDED too for the
// creates; 5 attempts, exponential backoff with jitter), the same policy as the Python client's.
// Updates and deletes take the resource's `etag` in the request (ABORTED when it changed since).

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const net = require('node:net');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILE = 'board/v1/board.proto';
const PENDING = 'ATTACHMENT_STATUS_PENDING';
// Bytes per UploadAttachment message: well under the board's 1 MiB per message.
const UPLOAD_CHUNK_BYTES = 256 * 1024;
// An upload's default deadline: the client's timeout plus this long per MiB (a slow link).
const UPLOAD_MS_PER_MIB = 2000;
const SERVICE_CONFIG = fs.readFileSync(path.resolve(__dirname, '..', 'service_config.json'), 'utf8');
// The methods that create something: each request carries a request_id (AIP-155).
const CREATES = new Set(['CreateUser', 'CreatePost', 'CreateComment', 'AddAttachment', 'UploadAttachment']);

function loadBoardPackage() {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names exactly as in the .proto (snake_case), like every other client
    longs: String, // int64 ids arrive as strings: JavaScript numbers lose precision above 2^53
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).board.v1;
}

class BoardError extends Error {
  constructor(err) {
    super(`${grpc.status[err.code] ?? err.code}: ${err.details}`);
    this.name = 'BoardError';
    this.code = err.code;
    this.details = err.details;
  }
}

// True when a target stays on this machine: a loopback address, localhost or a Unix socket.
function isLocalTarget(target) {
  let name = String(target).trim();
  if (name.startsWith('unix:') || name.startsWith('unix-abstract:')) return true;
  if (name.includes('://')) name = name.split('://')[1].replace(/^\/+/, '');
  const bare = name.replace(/^\[|\]$/g, '');
  const host = net.isIP(bare) ? bare : name.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  if (host === 'localhost') return true;
  if (net.isIPv4(host)) return host.startsWith('127.');
  return net.isIPv6(host) && (host === '::1' || host === '0:0:0:0:0:0:0:1');
}

// The channel credentials: TLS unless the target is local (`plaintext: true` opts out, `tls: true` opts in
// on loopback too), with `rootCerts` (PEM Buffer) or the system's roots.
function channelCredentials({ target = '', rootCerts = null, tls = null, plaintext = false } = {}) {
  if (plaintext && (tls || rootCerts)) throw new Error('plaintext cannot go with tls or rootCerts');
  const secure = plaintext ? false : Boolean(tls || rootCerts || !isLocalTarget(target));
  return secure ? grpc.credentials.createSsl(rootCerts ?? null) : grpc.credentials.createInsecure();
}

// Settled: TAGGED or FAILED with no re-tag queued; WatchAttachment's stream ends there.
function settled(attachment) {
  return attachment.status !== PENDING && !attachment.retag_pending;
}

// The request with a fresh request_id when `method` creates something and the request has none.
function withRequestId(method, request) {
  if (!CREATES.has(method) || request.request_id) return request;
  return { ...request, request_id: crypto.randomUUID() };
}

class BoardClient {
  constructor(
    target,
    {
      timeoutMs = 10000, token = null, rootCerts = null, tls = null, plaintext = false, credentials = null,
      retries = true,
    } = {},
  ) {
    const pkg = loadBoardPackage();
    this.target = target;
    this.timeoutMs = timeoutMs;
    this.token = token;
    const chosen = credentials ?? channelCredentials({ target, rootCerts, tls, plaintext });
    this.stub = new pkg.BoardService(target, chosen, {
      'grpc.max_send_message_length': 64 * 1024 * 1024,
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      ...(retries ? { 'grpc.service_config': SERVICE_CONFIG } : { 'grpc.enable_retries': 0 }),
    });
  }

  metadata() {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set('authorization', `Bearer ${this.token}`);
    return metadata;
  }

  call(method, request, { timeoutMs = this.timeoutMs } = {}) {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + timeoutMs);
      this.stub[method](withRequestId(method, request), this.metadata(), { deadline }, (err, response) => {
        if (err) reject(new BoardError(err));
        else resolve(response);
      });
    });
  }

  // Sign in; later calls carry the new token. Resolves to the SignInResponse (token, expiry, user).
  async signIn(email, password) {
    const response = await this.call('SignIn', { email, password });
    this.token = response.access_token;
    return response;
  }

  // Attach an image to a post with UploadAttachment: the metadata (with the size and a request_id), then
  // `data` (a Buffer) in chunks of `chunkBytes`; any size up to the server's attachment limit. Resolves to the
  // Attachment (PENDING); rejects with a BoardError. The default deadline grows with the size (2 s per MiB).
  upload(
    postId, filename, data,
    { contentType = '', chunkBytes = UPLOAD_CHUNK_BYTES, timeoutMs = null, requestId = null } = {},
  ) {
    const ms = timeoutMs ?? this.timeoutMs + (UPLOAD_MS_PER_MIB * data.length) / (1024 * 1024);
    const size = String(data.length);
    const metadata = withRequestId('UploadAttachment', {
      post_id: String(postId), filename, content_type: contentType, size_bytes: size, request_id: requestId ?? '',
    });
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + ms);
      const call = this.stub.UploadAttachment(this.metadata(), { deadline }, (err, response) => {
        if (err) reject(new BoardError(err));
        else resolve(response);
      });
      call.write({ metadata });
      for (let start = 0; start < data.length; start += chunkBytes) {
        call.write({ chunk: data.subarray(start, start + chunkBytes) });
      }
      call.end();
    });
  }

  // Revoke this client's token on the server and forget it.
  async signOut() {
    await this.call('SignOut', {});
    this.token = null;
  }

  // A server-streaming call as an async iterator of messages; errors reject as BoardError. Leaving the loop
  // early cancels the call.
  async *stream(method, request, { timeoutMs = this.timeoutMs } = {}) {
    const call = this.stub[method](request, this.metadata(), { deadline: new Date(Date.now() + timeoutMs) });
    let ended = false;
    try {
      for await (const message of call) yield message;
      ended = true;
    } catch (err) {
      ended = true;
      throw err.code !== undefined ? new BoardError(err) : err;
    } finally {
      if (!ended) {
        call.on('error', () => {}); // the CANCELLED status of our own cancel is expected
        call.cancel();
      }
    }
  }

  // Watch an attachment (WatchAttachment: its state now, then each change) until TAGGED or FAILED; resolves
  // to the last state. `onUpdate` sees every state. Rejects with a BoardError DEADLINE_EXCEEDED whose `last`
  // holds the last state seen when `timeoutMs` passes first.
  async waitForTagging(id, { timeoutMs = 120000, onUpdate = () => {} } = {}) {
    let last = null;
    try {
      for await (const attachment of this.stream('WatchAttachment', { id }, { timeoutMs })) {
        last = attachment;
        onUpdate(attachment);
        if (settled(attachment)) return attachment;
      }
    } catch (err) {
      if (err instanceof BoardError) err.last = last;
      throw err;
    }
    return last; // the server ended the stream without a settled state (e.g. the attachment was deleted)
  }

  close() {
    this.stub.close();
  }
}

module.exports = {
  BoardClient, BoardError, channelCredentials, isLocalTarget, loadBoardPackage, settled, withRequestId, grpc,
};
