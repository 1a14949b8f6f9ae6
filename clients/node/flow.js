#!/usr/bin/env node
'use strict';
// The tour from Node.js: create a user and a post, list the user's posts, read the post back.
// Usage: node flow.js [--target 127.0.0.1:50051]   (or BOARD_TARGET)

const { BoardClient } = require('./board_client');

async function runFlow(client, { name = 'Grace', email } = {}) {
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
  return { user, post, listed, fetched };
}

async function main(argv) {
  const flag = argv.indexOf('--target');
  const target = flag >= 0 ? argv[flag + 1] : process.env.BOARD_TARGET ?? '127.0.0.1:50051';
  const client = new BoardClient(target);
  try {
    const { user, post, listed, fetched } = await runFlow(client);
    console.log(`user   #${user.id} ${user.name} <${user.email}>`);
    console.log(`post   #${post.id} "${post.title}" by user #${post.user_id}`);
    console.log(`listed ${listed.posts.length} post(s) of user #${user.id}`);
    console.log(`got    #${fetched.id} created ${new Date(Number(fetched.create_time.seconds) * 1000).toISOString()}`);
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
