'use strict';
// A small promise-based client for board.v1.BoardService that loads protos/board/v1/board.proto at run
// time (no generated code), so it always speaks the contract in the repository.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILE = 'board/v1/board.proto';

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

class BoardClient {
  constructor(target, { timeoutMs = 10000, credentials = grpc.credentials.createInsecure() } = {}) {
    const pkg = loadBoardPackage();
    this.timeoutMs = timeoutMs;
    this.stub = new pkg.BoardService(target, credentials, {
      'grpc.max_send_message_length': 64 * 1024 * 1024,
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
    });
  }

  call(method, request) {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + this.timeoutMs);
      this.stub[method](request, { deadline }, (err, response) => {
        if (err) reject(new BoardError(err));
        else resolve(response);
      });
    });
  }

  close() {
    this.stub.close();
  }
}

module.exports = { BoardClient, BoardError, loadBoardPackage, grpc };
