'use strict';
// Runs against a real board server: BOARD_TARGET must point at it (tests/node starts one).
const test = require('node:test');
const assert = require('node:assert/strict');
const { BoardClient, BoardError, grpc } = require('../board_client');
const { runFlow } = require('../flow');

const target = process.env.BOARD_TARGET;

test('create, list, get and attach through the real server', { skip: !target && 'BOARD_TARGET not set' }, async () => {
  const client = new BoardClient(target);
  try {
    const { user, post, listed, fetched, attachment, attachments } = await runFlow(client);
    assert.match(user.id, /^[1-9][0-9]*$/); // int64 arrives as a decimal string
    assert.equal(post.user_id, user.id);
    assert.deepEqual(listed.posts.map((p) => p.id), [post.id]);
    assert.equal(listed.next_page_token, '');
    assert.equal(fetched.title, 'Hello from Node.js');
    assert.ok(Number(fetched.create_time.seconds) > 0);
    assert.equal(attachment.post_id, post.id);
    assert.equal(attachment.content_type, 'image/png');
    assert.equal(attachment.size_bytes, '77'); // int64 as a string
    assert.deepEqual([attachment.width, attachment.height], [4, 3]);
    assert.ok(attachment.status.startsWith('ATTACHMENT_STATUS_'));
    assert.deepEqual(attachments.attachments.map((a) => a.id), [attachment.id]);
  } finally {
    client.close();
  }
});

test('errors carry canonical codes', { skip: !target && 'BOARD_TARGET not set' }, async () => {
  const client = new BoardClient(target);
  try {
    await assert.rejects(client.call('GetPost', { id: '999999999' }), (err) => {
      assert.ok(err instanceof BoardError);
      assert.equal(err.code, grpc.status.NOT_FOUND);
      return true;
    });
    await assert.rejects(client.call('CreateUser', { name: '', email: 'not-an-email' }), (err) => {
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      return true;
    });
  } finally {
    client.close();
  }
});
