'use strict';
// Runs against a real board server with accounts on: BOARD_TARGET must point at it (tests/node starts one,
// tagging through a model server, so that uploads become TAGGED). With BOARD_TLS_TARGET and BOARD_CA_FILE,
// the TLS test runs against a second server that serves TLS with that CA's certificate.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const crypto = require('node:crypto');
const { BoardClient, BoardError, grpc, withRequestId } = require('../board_client');
const { runFlow, visible } = require('../flow');

const target = process.env.BOARD_TARGET;
const tlsTarget = process.env.BOARD_TLS_TARGET;
const caFile = process.env.BOARD_CA_FILE;
const PASSWORD = 'correct horse battery staple';

function email(prefix) {
  return `${prefix}-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}@example.org`;
}

async function rejectsWith(promise, code) {
  await assert.rejects(promise, (err) => {
    assert.ok(err instanceof BoardError, err);
    assert.equal(err.code, code, err.message);
    return true;
  });
}

test('sign up, sign in, post, watch the tagging, preview and filter through the real server', { skip: !target && 'BOARD_TARGET not set' }, async () => {
  const client = new BoardClient(target);
  try {
    const result = await runFlow(client, { waitMs: 60000 });
    const { user, session, post, listed, fetched, updates, attachment, attachments, preview, filtered } = result;
    assert.match(user.id, /^[1-9][0-9]*$/); // int64 arrives as a decimal string
    assert.ok(session.access_token.length >= 43, 'a 256-bit token');
    assert.equal(session.user.id, user.id);
    assert.equal(post.user_id, user.id); // user_id 0 in the request: the signed-in caller
    assert.deepEqual(listed.posts.map((p) => p.id), [post.id]);
    assert.equal(listed.next_page_token, '');
    assert.equal(fetched.title, 'Hello from Node.js');
    assert.ok(Number(fetched.create_time.seconds) > 0);

    // WatchAttachment: the state at once, then each change, ending with TAGGED.
    assert.ok(updates.length >= 1);
    assert.equal(updates.at(-1).status, 'ATTACHMENT_STATUS_TAGGED');
    assert.ok(updates.slice(0, -1).every((a) => a.status === 'ATTACHMENT_STATUS_PENDING'));
    assert.equal(attachment.post_id, post.id);
    assert.equal(attachment.content_type, 'image/png');
    assert.equal(attachment.size_bytes, '77'); // int64 as a string
    assert.deepEqual([attachment.width, attachment.height], [4, 3]);
    assert.ok(attachment.labels.length > 0);
    assert.ok(attachment.model.arch.length > 0);
    assert.deepEqual(attachments.attachments.map((a) => a.id), [attachment.id]);

    // GetAttachmentPreview: a JPEG no larger than the image, with the mask blended in (it is TAGGED).
    assert.equal(preview.content_type, 'image/jpeg');
    assert.deepEqual([...preview.data.subarray(0, 3)], [0xff, 0xd8, 0xff]);
    assert.ok(preview.width <= 4 && preview.height <= 3, `${preview.width}x${preview.height}`);

    // ListPosts with a filter, an order and the attachments view.
    assert.deepEqual(filtered.posts.map((p) => p.id), [post.id]);
    assert.deepEqual(filtered.posts[0].attachments.map((a) => a.id), [attachment.id]);
  } finally {
    client.close();
  }
});

test('writes need a token; sign-out revokes it at once', { skip: !target && 'BOARD_TARGET not set' }, async () => {
  const anonymous = new BoardClient(target);
  const member = new BoardClient(target);
  const stranger = new BoardClient(target, { token: 'not-a-token-the-server-ever-issued' });
  try {
    await rejectsWith(anonymous.call('CreatePost', { title: 't', content: 'c' }), grpc.status.UNAUTHENTICATED);
    await rejectsWith(stranger.call('GetPost', { id: '1' }), grpc.status.UNAUTHENTICATED);
    const address = email('node');
    await member.call('CreateUser', { name: 'Node', email: address, password: PASSWORD });
    await rejectsWith(member.signIn(address, 'not the password'), grpc.status.UNAUTHENTICATED);
    await member.signIn(address, PASSWORD);
    const token = member.token;
    const post = await member.call('CreatePost', { title: 'mine', content: 'signed in' });
    await rejectsWith(
      member.call('CreatePost', { user_id: String(Number(post.user_id) + 1000), title: 't', content: 'c' }),
      grpc.status.PERMISSION_DENIED,
    );
    await member.signOut();
    assert.equal(member.token, null);
    const revoked = new BoardClient(target, { token });
    try {
      await rejectsWith(revoked.call('UpdatePost', { post: { id: post.id, title: 'x' }, update_mask: { paths: ['title'] } }), grpc.status.UNAUTHENTICATED);
    } finally {
      revoked.close();
    }
  } finally {
    anonymous.close();
    member.close();
    stranger.close();
  }
});

test('errors carry canonical codes', { skip: !target && 'BOARD_TARGET not set' }, async () => {
  const client = new BoardClient(target);
  try {
    await rejectsWith(client.call('GetPost', { id: '999999999' }), grpc.status.NOT_FOUND);
    await rejectsWith(client.call('CreateUser', { name: '', email: 'not-an-email', password: PASSWORD }), grpc.status.INVALID_ARGUMENT);
    await rejectsWith(client.call('CreateUser', { name: 'Short', email: email('short'), password: 'short' }), grpc.status.INVALID_ARGUMENT);
    const watching = client.waitForTagging('999999999', { timeoutMs: 10000 });
    await rejectsWith(watching, grpc.status.NOT_FOUND);
  } finally {
    client.close();
  }
});

test('creates carry a request_id: a repeat returns the first post; a stale etag is ABORTED', { skip: !target && 'BOARD_TARGET not set' }, async () => {
  const client = new BoardClient(target);
  try {
    const address = email('retry');
    const user = await client.call('CreateUser', { name: 'Retry', email: address, password: PASSWORD });
    assert.ok(user.etag);
    await client.signIn(address, PASSWORD);
    const request = { title: 'once', content: 'retried', request_id: crypto.randomUUID() };
    const first = await client.call('CreatePost', request);
    const again = await client.call('CreatePost', request);
    assert.equal(again.id, first.id);
    const fresh = await client.call('CreatePost', { title: 'once', content: 'retried' }); // its own request_id
    assert.notEqual(fresh.id, first.id);
    await rejectsWith(client.call('CreatePost', { ...request, title: 'another' }), grpc.status.INVALID_ARGUMENT);

    const edit = (etag, title) => client.call('UpdatePost', { post: { id: first.id, title, etag }, update_mask: { paths: ['title'] } });
    const edited = await edit(first.etag, 'edited');
    assert.notEqual(edited.etag, first.etag);
    await rejectsWith(edit(first.etag, 'lost'), grpc.status.ABORTED);
    await rejectsWith(client.call('DeletePost', { id: first.id, etag: first.etag }), grpc.status.ABORTED);
    assert.equal((await client.call('GetPost', { id: first.id })).title, 'edited');
    await client.call('DeletePost', { id: first.id, etag: edited.etag });
  } finally {
    client.close();
  }
});

test('withRequestId() adds a UUID4 to creates only, and keeps one given', () => {
  assert.match(withRequestId('CreatePost', {}).request_id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(withRequestId('CreateComment', { request_id: 'mine' }).request_id, 'mine');
  assert.deepEqual(withRequestId('GetPost', { id: '1' }), { id: '1' });
});

test('visible() shows control characters as escapes and leaves other text alone', () => {
  assert.equal(visible('\x1b[31mred\r\x07 [b]:smile: שלום 🐕'), '\\x1b[31mred\\x0d\\x07 [b]:smile: שלום 🐕');
  assert.equal(visible('two\nlines\tok'), 'two\nlines\tok');
});

test('TLS with the CA certificate', { skip: !(tlsTarget && caFile) && 'BOARD_TLS_TARGET/BOARD_CA_FILE not set' }, async () => {
  const rootCerts = fs.readFileSync(caFile);
  const client = new BoardClient(tlsTarget, { rootCerts });
  const plaintext = new BoardClient(tlsTarget, { timeoutMs: 3000 });
  try {
    const address = email('tls');
    await client.call('CreateUser', { name: 'Tess', email: address, password: PASSWORD });
    const session = await client.signIn(address, PASSWORD);
    const post = await client.call('CreatePost', { title: 'over TLS', content: 'encrypted' });
    assert.equal(post.user_id, session.user.id);
    await rejectsWith(plaintext.call('GetPost', { id: post.id }), grpc.status.UNAVAILABLE);
  } finally {
    client.close();
    plaintext.close();
  }
});
