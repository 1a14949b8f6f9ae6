#!/usr/bin/env node
'use strict';
// The tour from Node.js, with accounts on: sign up and sign in, write a post as the signed-in user, list and
// read it back, attach a photo and watch it being tagged (WatchAttachment streams each change), fetch an
// overlay preview (GetAttachmentPreview) and find the post again with a filter (ListPosts filter/order_by).
// Usage: node flow.js [--target 127.0.0.1:50051] [--photo photo.jpg] [--preview out.jpg]
//                     [--ca-file ca.pem | --tls | --plaintext] [--wait-seconds 120]
// (TLS unless the target is loopback; --plaintext opts out)
// (or BOARD_TARGET, BOARD_CA_FILE). A fresh account is made with a random password that is never shown.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { BoardClient, grpc } = require('./board_client');

// A 4x3 orange PNG, so the flow runs without any file at hand.
const TINY_PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAQAAAADCAIAAAA7ljmRAAAAFElEQVR42mP8VSHCAANMDEgAhQMAOeABjP9NNrMAAAAASUVORK5CYII=',
  'base64',
);
const TAGGED = 'ATTACHMENT_STATUS_TAGGED';

// Server text on the terminal as it is: control characters (but newline and tab) shown as \xNN escapes.
function visible(text) {
  return String(text).replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function statusName(attachment) {
  return attachment.status.replace('ATTACHMENT_STATUS_', '');
}

async function runFlow(
  client,
  { name = 'Grace', email, password, photo = null, waitMs = 120000, previewSize = 256, log = () => {} } = {},
) {
  const stamp = `${process.pid}-${Date.now()}`;
  const credentials = {
    email: email ?? `grace-${stamp}@example.org`,
    password: password ?? crypto.randomBytes(24).toString('base64url'),
  };
  const user = await client.call('CreateUser', { name, ...credentials }); // sign-up is anonymous
  const session = await client.signIn(credentials.email, credentials.password);
  const post = await client.call('CreatePost', {
    user_id: '0', // 0: the signed-in caller
    title: 'Hello from Node.js',
    content: 'Written with @grpc/grpc-js and @grpc/proto-loader.',
  });
  const listed = await client.call('ListPosts', { user_id: user.id, page_size: 10 });
  const fetched = await client.call('GetPost', { id: post.id });
  // UploadAttachment: the bytes travel as Buffers in chunks, so a photo up to the server's limit goes up.
  const filename = photo ? path.basename(photo) : 'tiny.png';
  const added = await client.upload(post.id, filename, photo ? fs.readFileSync(photo) : TINY_PNG);

  const updates = [];
  let attachment;
  try {
    attachment = await client.waitForTagging(added.id, { timeoutMs: waitMs, onUpdate: (a) => updates.push(a) });
  } catch (err) {
    if (err.code !== grpc.status.DEADLINE_EXCEEDED) throw err;
    attachment = err.last ?? added;
    log(`attachment #${added.id} still ${statusName(attachment)} after ${waitMs / 1000} s: is tagging on?`);
  }
  const attachments = await client.call('ListAttachments', { post_id: post.id });
  // The overlay needs the mask, so it is asked for only once the model has tagged the photo.
  const preview = await client.call('GetAttachmentPreview', {
    id: added.id,
    max_size: previewSize,
    overlay: attachment.status === TAGGED,
  });
  const filter = `user_id = ${user.id}`;
  const filtered = await client.call('ListPosts', {
    filter,
    order_by: 'create_time desc',
    view: 'POST_VIEW_WITH_ATTACHMENTS',
    page_size: 10,
  });
  return { user, session, post, listed, fetched, added, updates, attachment, attachments, preview, filter, filtered };
}

function option(argv, name) {
  const at = argv.indexOf(name);
  return at >= 0 ? argv[at + 1] : undefined;
}

async function main(argv) {
  const target = option(argv, '--target') ?? process.env.BOARD_TARGET ?? '127.0.0.1:50051';
  const caFile = option(argv, '--ca-file') ?? process.env.BOARD_CA_FILE;
  const previewFile = option(argv, '--preview');
  const waitMs = Number(option(argv, '--wait-seconds') ?? 120) * 1000;
  const client = new BoardClient(target, {
    rootCerts: caFile ? fs.readFileSync(caFile) : null,
    tls: argv.includes('--tls') || null,
    plaintext: argv.includes('--plaintext'),
  });
  try {
    const result = await runFlow(client, { photo: option(argv, '--photo') ?? null, waitMs, log: console.log });
    const { user, session, post, listed, fetched, updates, attachment, preview, filter, filtered } = result;
    console.log(`user   #${user.id} ${visible(user.name)} <${visible(user.email)}>`);
    console.log(`signed in until ${new Date(Number(session.expire_time.seconds) * 1000).toISOString()}`);
    console.log(`post   #${post.id} "${visible(post.title)}" by user #${post.user_id}`);
    console.log(`listed ${listed.posts.length} post(s) of user #${user.id}`);
    console.log(`got    #${fetched.id} created ${new Date(Number(fetched.create_time.seconds) * 1000).toISOString()}`);
    console.log(`watch  #${attachment.id} ${updates.map(statusName).join(' -> ')}`);
    const labels = attachment.labels.map((l) => `${visible(l.name)} ${(l.fraction * 100).toFixed(1)}%`).join(', ');
    const model = attachment.model?.arch
      ? ` (model ${visible(attachment.model.arch)}@${visible(attachment.model.archive_sha256.slice(0, 12))})`
      : '';
    console.log(
      `attach #${attachment.id} ${visible(attachment.filename)} ${attachment.width}x${attachment.height} ` +
        `${statusName(attachment)}${labels ? `: ${labels}` : ''}${model}`,
    );
    if (previewFile) fs.writeFileSync(previewFile, preview.data);
    console.log(
      `preview ${preview.width}x${preview.height} ${visible(preview.content_type)} (${preview.data.length} bytes)` +
        `${previewFile ? ` saved to ${previewFile}` : ''}`,
    );
    const found = filtered.posts.map((p) => `#${p.id} (${p.attachments.length} attachment(s))`).join(', ');
    console.log(`filter "${filter}" order "create_time desc": ${filtered.posts.length} post(s): ${found}`);
  } finally {
    client.close();
  }
}

module.exports = { runFlow, visible, TINY_PNG };

if (require.main === module) {
  main(process.argv.slice(2)).catch((err) => {
    console.error(err.message);
    process.exit(1);
  });
}
