'use strict';
// Harness for black-box tests of the corecast gateway with the official socket.io-client.
// Same shape as tests/python: startGateway() runs `$CORECAST_BIN serve` on ephemeral loopback
// ports with a fresh data dir and waits for its one `corecast listening ...` stdout line;
// gw.admin() talks to the internal listener; gw.token() mints HS256 JWTs; connect() returns a
// client that records every event so that tests await events (bounded), never sleep.

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const jwt = require('jsonwebtoken');
const { io } = require('socket.io-client');

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const READY_RE = /^corecast listening public=(\S+) internal=(\S+) shards=(\d+) store=(\S+)\s*$/;
const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;
const DEFAULT_TIMEOUT_MS = 10_000;

function gatewayBinary() {
  const bin = process.env.CORECAST_BIN || path.join(REPO_ROOT, 'target/release/corecast');
  try {
    fs.accessSync(bin, fs.constants.X_OK);
  } catch {
    throw new Error(`gateway binary not found at ${bin}: build it with ` +
      '`cargo build --release --bins` or set CORECAST_BIN (scripts/test.sh does both)');
  }
  return bin;
}

/** `/api/groups/<id>` with the group id (a string; a number is taken as its decimal string, as
 * the gateway does) percent-encoded as one path segment. */
function groupPath(id) {
  return `/api/groups/${encodeURIComponent(String(id))}`;
}

class Gateway {
  constructor(env = {}) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'corecast-js-'));
    this.dataDir = path.join(this.dir, 'data');
    this.logPath = path.join(this.dir, 'gateway.log');
    this.env = {
      CORECAST_LISTEN: '127.0.0.1:0',
      CORECAST_INTERNAL_LISTEN: '127.0.0.1:0',
      CORECAST_SHARDS: '4',
      CORECAST_DATA_DIR: this.dataDir,
      CORECAST_JWT_SECRET: 'corecast-test-secret-0123456789abcdef',
      CORECAST_ADMIN_TOKEN: 'corecast-test-admin-token',
      // Tests send faster than a person; tests of the limit itself set it explicitly.
      CORECAST_RATE_LIMIT_PER_MIN: '0',
      // Likewise the per-connection event limit (tests/python/test_limits.py tests it).
      CORECAST_EVENT_RATE_PER_SEC: '0',
      CORECAST_DRAIN_SECS: '0',
      RUST_LOG: process.env.RUST_LOG || 'info',
      ...Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)])),
    };
    this.jwtSecret = this.env.CORECAST_JWT_SECRET;
    this.adminToken = this.env.CORECAST_ADMIN_TOKEN;
    this.proc = null;
    this.public = null;
    this.internal = null;
  }

  get url() {
    return `http://${this.public}`;
  }

  get running() {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async start(timeoutMs = READY_TIMEOUT_MS) {
    if (this.running) throw new Error('gateway already running');
    const bin = gatewayBinary();
    fs.mkdirSync(this.dataDir, { recursive: true });
    // Inherited CORECAST_* variables are dropped: a developer's shell must not change the test.
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith('CORECAST_')));
    Object.assign(env, this.env);
    if (this.public) { // a restart comes back on the same ports
      env.CORECAST_LISTEN = this.public;
      env.CORECAST_INTERNAL_LISTEN = this.internal;
    }
    const log = fs.createWriteStream(this.logPath, { flags: 'a' });
    log.write(`=== start ${bin} serve ===\n`);
    const proc = spawn(bin, ['serve'], { env, cwd: this.dataDir, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => {
      log.end(`=== exited code=${code} signal=${signal} ===\n`);
      resolve({ code, signal });
    }));
    // Both pipes are drained into the log for the process's whole life.
    proc.stderr.on('data', (chunk) => log.write(chunk));
    const lines = readline.createInterface({ input: proc.stdout });
    const ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`not ready within ${timeoutMs} ms`)), timeoutMs);
      lines.on('line', (line) => {
        log.write(line + '\n');
        const m = READY_RE.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve({ public: m[1], internal: m[2], shards: Number(m[3]), store: m[4] });
        }
      });
      proc.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`exited (code=${code} signal=${signal})`));
      });
      proc.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    try {
      const found = await ready;
      Object.assign(this, found);
    } catch (err) {
      await this.kill9();
      throw new Error(`gateway ${err.message} (no 'corecast listening ...' line on stdout); ` +
        `log ${this.logPath}:\n${this.logTail(40)}`);
    }
    return this;
  }

  /** SIGTERM, wait up to timeoutMs, then SIGKILL. */
  async stop(timeoutMs = STOP_TIMEOUT_MS) {
    if (!this.proc) return null;
    if (this.running) {
      this.proc.kill('SIGTERM');
      let timer;
      const timedOut = new Promise((resolve) => { timer = setTimeout(() => resolve('timeout'), timeoutMs); });
      const result = await Promise.race([this.exited, timedOut]);
      clearTimeout(timer);
      if (result === 'timeout') {
        this.proc.kill('SIGKILL');
      }
    }
    return this.exited;
  }

  /** Kills the gateway abruptly, as a crash or power loss would. */
  async kill9() {
    if (!this.proc) return null;
    if (this.running) this.proc.kill('SIGKILL');
    return this.exited;
  }

  /** Stops (gracefully, if still running) and starts again on the same data dir and ports. */
  async restart() {
    await this.stop();
    return this.start();
  }

  logTail(n = 40) {
    try {
      return fs.readFileSync(this.logPath, 'utf8').split('\n').slice(-n).join('\n');
    } catch {
      return '(no log)';
    }
  }

  /** An HS256 JWT for user `sub`, valid for an hour; `claims` add to or override it. */
  token(sub, claims = {}) {
    const now = Math.floor(Date.now() / 1000);
    return jwt.sign({ sub, iat: now, exp: now + 3600, ...claims }, this.jwtSecret, { algorithm: 'HS256' });
  }

  /**
   * Resolves once /readyz answers 200 (the store is reachable: a gateway on Cassandra starts
   * before its session has connected). Polls, as one waits for a service to come up.
   */
  async waitReady(timeoutMs = 60000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await fetch(`http://${this.internal}/readyz`).catch(() => null);
      if (r && r.status === 200) return;
      if (Date.now() > deadline) throw new Error(`/readyz not 200 within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  /** A request to the internal listener with the admin bearer token; returns { status, body, text }. */
  async admin(method, urlPath, json, { token } = {}) {
    const headers = { Authorization: `Bearer ${token ?? this.adminToken}` };
    if (json !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(`http://${this.internal}${urlPath}`, {
      method,
      headers,
      body: json === undefined ? undefined : JSON.stringify(json),
      signal: AbortSignal.timeout(DEFAULT_TIMEOUT_MS),
    });
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = null; }
    return { status: res.status, body, text };
  }

  async adminOk(method, urlPath, json) {
    const r = await this.admin(method, urlPath, json);
    if (r.status < 200 || r.status >= 300) {
      throw new Error(`${method} ${urlPath} -> ${r.status}: ${r.text}`);
    }
    return r;
  }

  putUser(id, email = `user${id}@example.test`, name = `User ${id}`) {
    return this.adminOk('PUT', `/api/users/${id}`, { email, name });
  }

  putGroup(id, members, name = `Group ${id}`) {
    return this.adminOk('PUT', groupPath(id), { name, members });
  }

  async history(groupId, { limit, before } = {}) {
    const q = new URLSearchParams();
    if (limit !== undefined) q.set('limit', String(limit));
    if (before !== undefined) q.set('before', String(before));
    const qs = q.toString() ? `?${q}` : '';
    return (await this.adminOk('GET', `${groupPath(groupId)}/messages${qs}`)).body.messages;
  }
}

/** Starts a gateway; `env` adds or overrides CORECAST_* settings. */
async function startGateway(env = {}) {
  return new Gateway(env).start();
}

/** A connected socket.io-client that records every event it receives. */
class ChatClient {
  constructor(name) {
    this.name = name;
    this.events = []; // { event, payload } in arrival order
    this.taken = new Set();
    this.waiters = new Set();
    this.connectError = null;
    this.socket = null;
  }

  record(event, payload, extra = []) {
    this.events.push({ event, payload, extra });
    for (const w of this.waiters) w();
  }

  /** Resolves with the first not-yet-taken `event` matching `predicate` (bounded wait). */
  waitFor(event, predicate = () => true, timeoutMs = DEFAULT_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (let i = 0; i < this.events.length; i++) {
          const e = this.events[i];
          if (this.taken.has(i) || e.event !== event || !predicate(e.payload)) continue;
          this.taken.add(i);
          done();
          resolve(e.payload);
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        const seen = this.events.slice(-20).map((e) => e.event);
        reject(new Error(`${this.name}: no matching '${event}' within ${timeoutMs} ms; ` +
          `events seen: ${JSON.stringify(seen)}`));
      }, timeoutMs);
      const waiter = () => { check(); };
      const done = () => { clearTimeout(timer); this.waiters.delete(waiter); };
      if (!check()) this.waiters.add(waiter);
    });
  }

  /** Emits `event` asking for an ack and resolves with the ack payload (bounded wait). */
  call(event, data, timeoutMs = DEFAULT_TIMEOUT_MS) {
    return this.socket.timeout(timeoutMs).emitWithAck(event, data);
  }

  /** Emits without an ack (failures then arrive as `error` events). */
  emit(event, data) {
    this.socket.emit(event, data);
  }

  close() {
    if (this.socket) this.socket.disconnect();
  }
}

/**
 * connect(gw, userId) -> connected ChatClient. Options: { token } for a hand-made token,
 * { expectFailure: true } to resolve with the client after a refused connect (its
 * `connectError` holds the error), { timeoutMs }, and extra socket.io-client options in { io }.
 */
function connect(gw, userId, { token, expectFailure = false, timeoutMs = DEFAULT_TIMEOUT_MS, io: ioOpts = {} } = {}) {
  const client = new ChatClient(userId == null ? 'client' : `user${userId}`);
  const auth = { token: token ?? gw.token(userId) };
  const socket = io(gw.url, {
    path: '/socket.io/',
    auth,
    reconnection: false,
    timeout: timeoutMs,
    forceNew: true,
    ...ioOpts,
  });
  client.socket = socket;
  // A stored event's last argument is its connection state recovery offset (a string after
  // the payload); the payload is the first.
  socket.onAny((event, ...args) => client.record(event, args[0], args.slice(1)));
  socket.on('disconnect', (reason) => client.record('disconnect', reason));
  return new Promise((resolve, reject) => {
    socket.once('connect', () => {
      client.record('connect', null);
      if (expectFailure) {
        socket.disconnect();
        reject(new Error(`${client.name}: connect was expected to be refused but succeeded`));
      } else {
        resolve(client);
      }
    });
    socket.once('connect_error', (err) => {
      client.connectError = err;
      client.record('connect_error', { message: err.message, data: err.data });
      socket.disconnect();
      if (expectFailure) resolve(client);
      else reject(new Error(`${client.name}: connect refused: ${err.message}`));
    });
  });
}

/**
 * One gateway for a test file, started before its tests and stopped after them, with the
 * file's helpers: `fx.gw` (the gateway), `fx.fresh()` (ids unique in the file, from
 * `firstId`), `fx.client(userId, opts)` (a connected client, closed after each test; `opts` as
 * for connect()), `fx.track(closable)` (closed after each test too) and `fx.group(n)` (n fresh
 * users in a fresh group: `{ gid, users }`).
 */
function fileGateway(firstId, env) {
  const { before, after, afterEach } = require('node:test');
  let nextId = firstId;
  let open = [];
  const fx = {
    gw: null,
    fresh: () => nextId++,
    track(c) { open.push(c); return c; },
    async client(userId, opts) { return fx.track(await connect(fx.gw, userId, opts)); },
    async group(n) {
      const users = [];
      for (let i = 0; i < n; i++) {
        const u = fx.fresh();
        await fx.gw.putUser(u);
        users.push(u);
      }
      const gid = `g-${fx.fresh()}`; // group ids are strings, as the chat app's room names are
      await fx.gw.putGroup(gid, users);
      return { gid, users };
    },
  };
  before(async () => { fx.gw = await startGateway(env); });
  after(async () => { if (fx.gw) await fx.gw.stop(); });
  afterEach(() => { for (const c of open) c.close(); open = []; });
  return fx;
}

// ----- cluster mode (cluster.test.js, rolling.test.js) ------------------------------------------

/** A port below 32768 (under the kernel's ephemeral range) that nothing listens on. */
async function freePort() {
  for (let i = 0; i < 200; i++) {
    const port = 20000 + crypto.randomInt(12000);
    const free = await new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free port between 20000 and 32000');
}

/** Resolves once `fn()` resolves truthy; polls state no event announces, bounded. */
async function until(what, fn, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await fn().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function redisAnswers(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write('PING\r\n'));
    s.once('data', (d) => { s.destroy(); resolve(d.toString().startsWith('+PONG')); });
    s.once('error', () => resolve(false));
  });
}

/** A redis-server of the caller's own on a free port, answering PING; `.url`, `.stop()`. */
async function startRedis() {
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '',
    '--appendonly', 'no'], { stdio: 'ignore' });
  proc.once('error', (e) => { throw new Error(`redis-server: ${e.message} (apt-get install redis-server)`); });
  await until(`redis-server on ${port}`, () => redisAnswers(port), 10_000);
  return { url: `redis://127.0.0.1:${port}`, stop: () => proc.kill('SIGTERM') };
}

/** The value of an unlabelled metric on `gw`'s /metrics (NaN when absent). */
async function metric(gw, name) {
  const { text } = await gw.admin('GET', '/metrics');
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}

/**
 * `n` nodes in cluster mode on `redisUrl` and a fresh keyspace of `scyllaNodes`, with node ids
 * `${prefix}-0`, ... and `env` added; resolves once each is ready and sees all `n` alive.
 */
async function startCluster({ n = 3, redisUrl, scyllaNodes, prefix, env = {} }) {
  const keyspace = `corecast_js_${crypto.randomBytes(8).toString('hex')}`;
  const nodes = [];
  for (let i = 0; i < n; i++) {
    // One at a time: the first creates the schema, the others find it.
    const gw = new Gateway({
      CORECAST_STORE: 'scylla', CORECAST_SCYLLA_NODES: scyllaNodes, CORECAST_SCYLLA_KEYSPACE: keyspace,
      CORECAST_CLUSTER: redisUrl, CORECAST_NODE_ID: `${prefix}-${i}`,
      CORECAST_SHARDS: '2', CORECAST_LISTEN: `127.0.0.1:${await freePort()}`,
      CORECAST_INTERNAL_LISTEN: `127.0.0.1:${await freePort()}`,
      ...env,
    });
    await gw.start();
    await gw.waitReady(120_000);
    nodes.push(gw);
  }
  for (const gw of nodes) await seesNodes(gw, n);
  return nodes;
}

/** Resolves once `gw` counts `n` live nodes in the cluster. */
function seesNodes(gw, n, timeoutMs = 15_000) {
  return until(`${gw.internal} to see ${n} nodes`,
    async () => (await metric(gw, 'corecast_cluster_nodes')) === n, timeoutMs);
}

module.exports = {
  startGateway, Gateway, connect, ChatClient, gatewayBinary, groupPath, fileGateway, REPO_ROOT,
  freePort, until, startRedis, metric, startCluster, seesNodes,
};
