// The Node.js Socket.IO v4 server that corecast replaces, kept as the benchmark baseline.
//
// Same wire semantics as corecast for what the load generator exercises: a JWT (HS256,
// `sub` = user id) in the CONNECT auth payload, a room per group joined at connect,
// `sendMessage` broadcast as `newMessage` to the group's room (sender included) with a
// string id, the group id echoed as the string it was created with (a number in input is
// taken as its decimal string), `readBy: [senderId]` and an ISO timestamp, the
// `{ ok, id, timestamp }` ack, and `error` events.
// No database: groups live in memory and are set up through the same admin API as
// corecast's internal listener (`PUT /api/users/{id}`, `PUT /api/groups/{id}`), so the
// load generator has one code path for both servers.
//
// `BASELINE_STORE=sqlite` (or `--store sqlite`) is the variant that does what the chat app
// corecast replaces does: each message is inserted into SQLite (better-sqlite3, synchronous, in the
// handler, before the emit; its row id is the message id) in its own transaction, with
// `journal_mode=WAL` and `synchronous=FULL`, so each message costs one fsync of the WAL before
// anyone sees it: the durability corecast's embedded store gives (also WAL + FULL). The
// database is `messages.db` in BASELINE_SQLITE_DIR (default: a new temporary folder).
//
// Configured with corecast's variable names: CORECAST_LISTEN, CORECAST_INTERNAL_LISTEN,
// CORECAST_JWT_SECRET, CORECAST_ADMIN_TOKEN. Prints one "listening" line when ready.
'use strict';

const http = require('http');
const { Server } = require('socket.io');
const jwt = require('jsonwebtoken');

function splitAddr(s, fallback) {
  const v = s || fallback;
  const i = v.lastIndexOf(':');
  return { host: v.slice(0, i), port: Number(v.slice(i + 1)) };
}

const pub = splitAddr(process.env.CORECAST_LISTEN, '127.0.0.1:3000');
const internal = splitAddr(process.env.CORECAST_INTERNAL_LISTEN, '127.0.0.1:3001');
const secret = process.env.CORECAST_JWT_SECRET || 'dev-secret';
const adminToken = process.env.CORECAST_ADMIN_TOKEN || 'dev-admin';
const storeArg = process.argv.indexOf('--store');
const storeKind = (storeArg > 0 ? process.argv[storeArg + 1] : process.env.BASELINE_STORE) || 'none';
if (storeKind !== 'none' && storeKind !== 'sqlite') {
  console.error(`unknown store ${JSON.stringify(storeKind)}: none or sqlite`);
  process.exit(2);
}

/** With the SQLite store: inserts one message, returns its id (the row id) as a string. */
let insertMessage = null;
if (storeKind === 'sqlite') {
  const fs = require('fs');
  const os = require('os');
  const path = require('path');
  const Database = require('better-sqlite3');
  const dir = process.env.BASELINE_SQLITE_DIR || fs.mkdtempSync(path.join(os.tmpdir(), 'baseline-sqlite-'));
  const db = new Database(path.join(dir, 'messages.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec(`CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    group_id TEXT NOT NULL,
    sender_id INTEGER NOT NULL,
    text TEXT NOT NULL,
    attachments TEXT NOT NULL,
    created_at TEXT NOT NULL
  )`);
  const insert = db.prepare(
    'INSERT INTO messages (group_id, sender_id, text, attachments, created_at) VALUES (?, ?, ?, ?, ?)');
  insertMessage = (m) =>
    String(insert.run(m.groupId, m.senderId, m.text, JSON.stringify(m.attachments), m.timestamp).lastInsertRowid);
}

/** groupId (string) -> { name, members: Set<number> } */
const groups = new Map();
/** userId (number) -> Set<groupId> */
const groupsOf = new Map();
/** userId -> { email, name } */
const users = new Map();
let nextMessageId = 1;

/** The group id of a payload as corecast reads it: a string of 1 to 128 bytes without control
 * characters, or a non-negative integer taken as its decimal string; otherwise null. */
function groupIdOf(v) {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return String(v);
  if (typeof v !== 'string') return null;
  const bytes = Buffer.byteLength(v, 'utf8');
  // eslint-disable-next-line no-control-regex
  if (bytes < 1 || bytes > 128 || /[\u0000-\u001f\u007f-\u009f]/.test(v)) return null;
  return v;
}

function setGroup(id, name, members) {
  const old = groups.get(id);
  if (old) for (const u of old.members) groupsOf.get(u)?.delete(id);
  const set = new Set(members.map(Number));
  groups.set(id, { name, members: set });
  for (const u of set) {
    if (!groupsOf.has(u)) groupsOf.set(u, new Set());
    groupsOf.get(u).add(id);
  }
}

// ---- public listener: Socket.IO ----
const httpServer = http.createServer();
const io = new Server(httpServer, {
  // Both transports, as the Node gateway runs in production: the loadgen's WebSocket sessions
  // connect straight to WebSocket, its polling sessions (--transport polling) stay on polling.
  transports: ['polling', 'websocket'],
  serveClient: false,
  cors: { origin: '*' },
  pingInterval: 25000,
  pingTimeout: 20000,
  maxHttpBufferSize: 1e6,
  perMessageDeflate: false,
});

io.use((socket, next) => {
  const token = socket.handshake.auth && socket.handshake.auth.token;
  if (!token) return next(new Error('missing token'));
  try {
    const claims = jwt.verify(token, secret, { algorithms: ['HS256'] });
    const uid = Number(claims.sub);
    if (!Number.isSafeInteger(uid)) return next(new Error('invalid token: sub is not a user id'));
    socket.data.userId = uid;
    next();
  } catch (e) {
    next(new Error('invalid token: ' + e.message));
  }
});

io.on('connection', (socket) => {
  const uid = socket.data.userId;
  for (const g of groupsOf.get(uid) || []) socket.join('g:' + g);

  socket.on('sendMessage', (payload, ack) => {
    const fail = (code, message) => {
      if (typeof ack === 'function') ack({ ok: false, error: { code, message } });
      else socket.emit('error', { message, code });
    };
    if (!payload || typeof payload !== 'object') return fail('invalid_payload', 'payload must be an object');
    const groupId = groupIdOf(payload.groupId);
    const text = payload.text;
    if (groupId === null || typeof text !== 'string') {
      return fail('invalid_payload', 'groupId and text are required');
    }
    const group = groups.get(groupId);
    if (!group) return fail('not_found', 'no such group');
    if (!group.members.has(uid)) return fail('not_member', 'not a member of this group');
    const msg = {
      id: '',
      senderId: uid,
      groupId,
      text,
      attachments: Array.isArray(payload.attachments) ? payload.attachments : [],
      timestamp: new Date().toISOString(),
      readBy: [uid],
    };
    try {
      msg.id = insertMessage ? insertMessage(msg) : String(nextMessageId++);
    } catch (e) {
      return fail('store_unavailable', 'the message was not stored: ' + e.message);
    }
    io.to('g:' + groupId).emit('newMessage', msg);
    if (typeof ack === 'function') ack({ ok: true, id: msg.id, timestamp: msg.timestamp });
  });
});

// ---- internal listener: the admin API subset the load generator uses ----
const admin = http.createServer((req, res) => {
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  if (req.url === '/healthz' || req.url === '/readyz') return reply(200, { ok: true });
  if (req.headers.authorization !== 'Bearer ' + adminToken) return reply(401, { error: 'unauthorized' });
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    let json;
    try { json = body ? JSON.parse(body) : {}; } catch { return reply(400, { error: 'invalid JSON' }); }
    let m;
    if (req.method === 'PUT' && (m = /^\/api\/users\/(\d+)$/.exec(req.url))) {
      users.set(Number(m[1]), { email: json.email, name: json.name });
      return reply(200, { ok: true });
    }
    if (req.method === 'PUT' && (m = /^\/api\/groups\/([^/?]+)$/.exec(req.url))) {
      if (!Array.isArray(json.members)) return reply(400, { error: 'members must be an array' });
      let id;
      try { id = groupIdOf(decodeURIComponent(m[1])); } catch { id = null; }
      if (id === null) return reply(400, { error: 'invalid group id in the path' });
      setGroup(id, json.name || '', json.members);
      return reply(200, { ok: true });
    }
    reply(404, { error: 'not found' });
  });
});

httpServer.listen(pub.port, pub.host, () => {
  admin.listen(internal.port, internal.host, () => {
    const a = httpServer.address();
    const b = admin.address();
    console.log(`baseline listening public=${a.address}:${a.port} internal=${b.address}:${b.port} shards=1 store=${storeKind} node=${process.version}`);
  });
});
