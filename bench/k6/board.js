// One closed-loop gRPC load for bench.board (k6 v1.1.0, k6/net/grpc): VUS virtual users, each on its own
// connection, call OPERATION back to back for WARMUP + SECONDS; only the last SECONDS are measured (calls
// tagged phase=measure). The same script drives the board and the empty floors, so both pay the same
// client cost. Results: handleSummary writes k6's summary JSON to SUMMARY.
//
// Environment (set by bench/board.py):
//   TARGET       HOST:PORT
//   PROTO_DIR    import path holding board/v1/board.proto
//   OPERATION    GetPost | CreatePost | ListPosts | mixed (70 % GetPost, 20 % ListPosts, 10 % CreatePost)
//   VUS, SECONDS, WARMUP   concurrency, measured seconds, warm-up seconds
//   IDS_FILE     JSON list of existing post ids (GetPost picks one at random per call)
//   USER_ID      author for CreatePost
//   TOKEN        access token from SignIn; empty = no authorization metadata (server without accounts)
//   REQUEST_ID   1: every CreatePost carries a fresh request_id (a UUID4, AIP-155); else none (bench.request_id)
//   SUMMARY      where to write the summary JSON
//   PROTOCOL     grpc (the default), or connect: the same calls as Connect unary POSTs over HTTP/1.1 to the
//                board's HTTP listener at TARGET, binary (application/proto) as the web app sends them (their
//                latency is then http_req_duration)
import grpc from 'k6/net/grpc';
import http from 'k6/http';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import { SharedArray } from 'k6/data';

const OPERATION = __ENV.OPERATION || 'GetPost';
const VUS = parseInt(__ENV.VUS || '1', 10);
const SECONDS = parseFloat(__ENV.SECONDS || '5');
const WARMUP = parseFloat(__ENV.WARMUP || '1');
const USER_ID = __ENV.USER_ID || '1';
const TOKEN = __ENV.TOKEN || '';
const REQUEST_ID = __ENV.REQUEST_ID === '1';
const PROTOCOL = __ENV.PROTOCOL || 'grpc';
const SERVICE = 'board.v1.BoardService/';

const ids = new SharedArray('post ids', () => JSON.parse(open(__ENV.IDS_FILE)));
const calls = new Counter('calls');
const failed = new Counter('failed_calls');

const client = new grpc.Client();
client.load([__ENV.PROTO_DIR], 'board/v1/board.proto');

export const options = {
  scenarios: {
    load: {
      executor: 'constant-vus',
      vus: VUS,
      duration: `${Math.round((WARMUP + SECONDS) * 1000)}ms`,
      gracefulStop: '30s',
    },
  },
  summaryTrendStats: ['min', 'med', 'p(50)', 'p(90)', 'p(99)', 'max', 'avg'],
  // Thresholds that always pass: they make k6 report the measured phase on its own in the summary.
  thresholds: {
    'calls{phase:measure}': ['count>=0'],
    'grpc_req_duration{phase:measure}': ['max>=0'],
    'http_req_duration{phase:measure}': ['max>=0'],
    'failed_calls{phase:measure}': ['count>=0'],
  },
  noConnectionReuse: false,
};

let connected = false;
let warned = false;

function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

function request(operation) {
  switch (operation) {
    case 'GetPost':
      return { id: pick(ids) };
    case 'ListPosts':
      return { page_size: 50 };
    case 'CreatePost':
      if (REQUEST_ID) {
        return { user_id: USER_ID, title: 'bench', content: 'x'.repeat(200), request_id: crypto.randomUUID() };
      }
      return { user_id: USER_ID, title: 'bench', content: 'x'.repeat(200) };
    default:
      throw new Error(`unknown operation ${operation}`);
  }
}

function chooseMixed() {
  const r = Math.random();
  if (r < 0.7) return 'GetPost';
  if (r < 0.9) return 'ListPosts';
  return 'CreatePost';
}

// The request messages in protobuf's binary form (field numbers from board.proto), built by hand: k6 has no
// protobuf encoder for HTTP bodies, and these three fields are all the load needs.
function varint(value, out) {
  let n = Number(value);
  while (n >= 128) {
    out.push((n % 128) | 128);
    n = Math.floor(n / 128);
  }
  out.push(n);
}

// message: [field number, 'varint' | 'string', value] triples.
function encode(message) {
  const out = [];
  for (const [number, kind, value] of message) {
    if (kind === 'string') {
      out.push((number << 3) | 2);
      varint(value.length, out); // ASCII only: one byte per character
      for (let i = 0; i < value.length; i += 1) out.push(value.charCodeAt(i));
    } else {
      out.push(number << 3);
      varint(value, out);
    }
  }
  return new Uint8Array(out).buffer;
}

function binaryRequest(operation) {
  const fields = request(operation);
  switch (operation) {
    case 'GetPost':
      return encode([[1, 'varint', fields.id]]); // GetPostRequest.id
    case 'ListPosts':
      return encode([[2, 'varint', fields.page_size]]); // ListPostsRequest.page_size
    case 'CreatePost': // CreatePostRequest.user_id, title, content
      return encode([[1, 'varint', fields.user_id], [2, 'string', fields.title], [3, 'string', fields.content]]);
    default:
      throw new Error(`unknown operation ${operation}`);
  }
}

function invokeConnect(operation, tags) {
  const headers = { 'content-type': 'application/proto' };
  if (TOKEN) {
    headers.authorization = `Bearer ${TOKEN}`;
  }
  const response = http.post(`http://${__ENV.TARGET}/${SERVICE}${operation}`, binaryRequest(operation), {
    headers,
    tags,
    timeout: '30s',
    responseType: 'none',
  });
  calls.add(1, tags);
  if (response.status !== 200) {
    failed.add(1, tags);
    if (!warned) {
      console.error(`${operation}: HTTP ${response.status} ${response.error || ''}`);
      warned = true;
    }
  }
}

export default function () {
  if (PROTOCOL === 'connect') {
    const operation = OPERATION === 'mixed' ? chooseMixed() : OPERATION;
    const measuring = Date.now() - exec.scenario.startTime >= WARMUP * 1000;
    invokeConnect(operation, { phase: measuring ? 'measure' : 'warmup' });
    return;
  }
  if (!connected) {
    client.connect(__ENV.TARGET, { plaintext: true, timeout: '30s' });
    connected = true;
  }
  const operation = OPERATION === 'mixed' ? chooseMixed() : OPERATION;
  const measuring = Date.now() - exec.scenario.startTime >= WARMUP * 1000;
  const tags = { phase: measuring ? 'measure' : 'warmup' };
  const params = { tags, timeout: '30s', discardResponseMessage: true };
  if (TOKEN) {
    params.metadata = { authorization: `Bearer ${TOKEN}` };
  }
  const response = client.invoke(SERVICE + operation, request(operation), params);
  calls.add(1, tags);
  if (response.status !== grpc.StatusOK) {
    failed.add(1, tags);
    if (!warned) {
      console.error(`${operation}: status ${response.status} ${JSON.stringify(response.error)}`);
      warned = true;
    }
  }
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY]: JSON.stringify(data) };
}
