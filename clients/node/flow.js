#!/usr/bin/env node
'use strict';
// The tour from Node.js: create a user and a post, list the user's posts, read the post back, attach a photo
// (tagged in the background by the model server) and read the attachment back.
// Usage: node flow.js [--target 127.0.0.1:50051] [--photo photo.jpg]   (or BOARD_TARGET)

const fs = require('node:fs');
const path = require('node:path');
const { BoardClient } = require('./board_client');

// A 4x3 orange PNG, so the flow runs without any file at hand.
const TINY_PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAQAAAADCAIAAAA7ljmRAAAAFElEQVR42mP8VSHCAANMDEgAhQMAOeABjP9NNrMAAAAASUVORK5CYII=',
  'base64',
);

async function runFlow(client, { name = 'Grace', email, photo = null } = {}) {
  const stamp = `${process.pid}-${Date.now()}`;
  const user = await client.call('CreateUser', {
    name,
    email: email ?? `grace-${stamp}@example.org`,
  });
  const post = await client.call('CreatePost', {
    user_id: user.id,
    title: 'Hello from Node.js',
    content: 'Written with @grpc/grpc-js and @grpc/proto-loader.',
  });
  const listed = await client.call('ListPosts', { user_id: user.id, page_size: 10 });
  const fetched = await client.call('GetPost', { id: post.id });
  const added = await client.call('AddAttachment', {
    post_id: post.id,
    filename: photo ? path.basename(photo) : 'tiny.png',
    data: photo ? fs.readFileSync(photo) : TINY_PNG, // bytes travel as a Buffer
  });
  const attachment = await client.call('GetAttachment', { id: added.id });
  const attachments = await client.call('ListAttachments', { post_id: post.id });
  return { user, post, listed, fetched, attachment, attachments };
}

async function main(argv) {
  const flag = argv.indexOf('--target');
  const target = flag >= 0 ? argv[flag + 1] : process.env.BOARD_TARGET ?? '127.0.0.1:50051';
  const photoFlag = argv.indexOf('--photo');
  const photo = photoFlag >= 0 ? argv[photoFlag + 1] : null;
  const client = new BoardClient(target);
  try {
    const { user, post, listed, fetched, attachment } = await runFlow(client, { photo });
    console.log(`user   #${user.id} ${user.name} <${user.email}>`);
    console.log(`post   #${post.id} "${post.title}" by user #${post.user_id}`);
    console.log(`listed ${listed.posts.length} post(s) of user #${user.id}`);
    console.log(`got    #${fetched.id} created ${new Date(Number(fetched.create_time.seconds) * 1000).toISOString()}`);
    const labels = attachment.labels.map((l) => `${l.name} ${(l.fraction * 100).toFixed(1)}%`).join(', ');
    console.log(
      `attach #${attachment.id} ${attachment.filename} ${attachment.width}x${attachment.height} ` +
        `${attachment.status.replace('ATTACHMENT_STATUS_', '')}${labels ? `: ${labels}` : ''}`,
    );
  } finally {
    client.close();
  }
}

module.exports = { runFlow };

if (require.main === module) {
  main(process.argv.slice(2)).catch((err) => {
    console.error(err.message);
    process.exit(1);
  });
}
