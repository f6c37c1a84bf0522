'use strict';
// A rolling restart of a cluster without losing a message (issue 18), as an operator does it
// (docs/operations.md, "Rolling restart"): three `corecast serve` nodes on one redis-server and
// one Cassandra keyspace behind a plain TCP load balancer that sends new connections to the
// nodes whose /readyz answers 200; stock socket.io-client clients (reconnection and connection
// state recovery on, as by default; WebSocket only, so that the balancer gives each node three
// sessions to drain: a polling session's requests are TCP connections of their own, spread
// unevenly; test_cluster_lb.py covers polling behind a balancer) connected through it; senders sending a steady trickle with a `clientMsgId`,
// sending again with the same one when a send fails, as an app does. Each node in turn gets
// SIGTERM (the graceful drain, CORECAST_DRAIN_SECS), exits, and is started again under the same
// CORECAST_NODE_ID; the next goes once it is ready and every node sees the three.
//
// What a user notices, checked: every message a sender meant to send is acknowledged, once
// (the resend gets the original's id) and stored once; every member has every message exactly
// once, in id order, from live delivery and the recovery replay after each reconnect, and
// every reconnect recovered; a send that failed said so (an ack with an error, or the client's
// "socket has been disconnected"): no ack was lost on a live connection (no ack timeout).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const net = require('node:net');
const { io } = require('socket.io-client');
const { ChatClient, freePort, until, startRedis, startCluster, seesNodes } = require('./helpers');

const scyllaNodes = process.env.CORECAST_TEST_SCYLLA_NODES;
const NODES = 3;
const DRAIN_SECS = 2;
const ACK_TIMEOUT_MS = 20_000; // above the 15 s within which a forwarded send is answered

/**
 * A plain TCP load balancer on loopback: round robin over the nodes whose /readyz answered
 * 200 at its last health check (every 100 ms), as an operator's balancer with an HTTP health
 * check does. No stickiness; a node that refuses the connection gets the client's closed (the
 * client reconnects, and is routed again).
 */
class Balancer {
  constructor(nodes) {
    this.nodes = nodes;
    this.healthy = nodes.map(() => false);
    this.reasons = nodes.map(() => new Set()); // every /readyz answer seen per node
    this.routed = nodes.map(() => 0);
    this.next = 0;
    this.open = new Set();
    this.byPort = new Map(); // client port -> node, for failure reports
  }

  async start() {
    await this.check();
    this.timer = setInterval(() => this.check(), 100);
    this.server = net.createServer((c) => this.route(c));
    const port = await freePort();
    await new Promise((resolve) => this.server.listen(port, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${port}`;
    return this;
  }

  async check() {
    if (this.checking) return;
    this.checking = true;
    await Promise.all(this.nodes.map(async (gw, i) => {
      const r = gw.running
        ? await fetch(`http://${gw.internal}/readyz`, { signal: AbortSignal.timeout(1000) }).catch(() => null)
        : null;
      const body = r ? await r.json().catch(() => ({})) : null;
      this.healthy[i] = r !== null && r.status === 200;
      this.reasons[i].add(r === null ? 'unreachable' : r.status === 200 ? 'ready' : body.reason);
    }));
    this.checking = false;
  }

  route(client) {
    this.open.add(client);
    client.once('close', () => this.open.delete(client));
    client.on('error', () => {});
    const live = this.healthy.flatMap((h, i) => (h ? [i] : []));
    if (live.length === 0) {
      client.destroy();
      return;
    }
    const i = live[this.next++ % live.length];
    this.routed[i] += 1;
    this.byPort.set(client.remotePort, i);
    const [host, port] = this.nodes[i].public.split(':');
    const up = net.connect(Number(port), host);
    up.on('error', () => client.destroy());
    client.on('error', () => up.destroy());
    up.on('close', () => client.destroy());
    client.on('close', () => up.destroy());
    client.pipe(up);
    up.pipe(client);
  }

  stop() {
    clearInterval(this.timer);
    for (const c of this.open) c.destroy();
    this.server.close();
  }
}

/**
 * A stock client through the balancer: reconnection on (socket.io-client's defaults), so a
 * drained connection comes back by itself, with its pid and offset. Records every event, and
 * for each reconnect whether it recovered.
 */
async function member(lb, gw, userId) {
  const c = new ChatClient(`user${userId}`);
  c.socket = io(lb.url, { path: '/socket.io/', auth: { token: gw.token(userId) }, forceNew: true,
    transports: ['websocket'] });
  c.reconnects = [];
  c.disconnects = 0;
  c.socket.onAny((event, ...args) => c.record(event, args[0], args.slice(1)));
  c.socket.on('disconnect', (reason) => { c.disconnects += 1; c.record('disconnect', reason); });
  await new Promise((resolve, reject) => {
    c.socket.once('connect', resolve);
    c.socket.once('connect_error', reject);
  });
  c.socket.on('connect_error', (err) => c.record('connect_error', { message: err.message, data: err.data }));
  const node = () => lb.byPort.get(c.socket.io.engine?.transport?.ws?._socket?.localPort);
  c.record('reconnect', { node: node() });
  c.socket.on('connect', () => {
    c.reconnects.push(c.socket.recovered);
    c.record('reconnect', { recovered: c.socket.recovered, node: node() });
  });
  return c;
}

function connected(c) {
  if (c.socket.connected) return Promise.resolve();
  return new Promise((resolve) => c.socket.once('connect', resolve));
}

/**
 * Sends `text` with `clientMsgId` until it is acknowledged: after an error ack, or the
 * client's own error (its connection went), it waits to be connected and sends again with the
 * same `clientMsgId`. Resolves with { ack, errors: [{ code, ms }] } (`ms`: how long the failed
 * attempt took); `stopAt` bounds it.
 */
async function sendUntilAcked(c, payload, stopAt) {
  const errors = [];
  for (;;) {
    await connected(c);
    let ack;
    const t0 = Date.now();
    try {
      ack = await c.socket.timeout(ACK_TIMEOUT_MS).emitWithAck('sendMessage', payload);
    } catch (err) {
      ack = { ok: false, error: { code: `client: ${err.message}` } };
    }
    if (ack.ok === true) return { ack, errors };
    errors.push({ code: ack.error.code, ms: Date.now() - t0 });
    if (Date.now() > stopAt) {
      throw new Error(`${payload.clientMsgId}: not acked; errors ${JSON.stringify(errors)}`);
    }
    // A short pause before the resend (a retry backoff, not a wait for an event).
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

let redis;
let nodes = [];
let lb;
const clients = [];

before(async () => {
  if (!scyllaNodes) return;
  redis = await startRedis();
  nodes = await startCluster({ n: NODES, redisUrl: redis.url, scyllaNodes, prefix: 'roll-node',
    env: { CORECAST_DRAIN_SECS: DRAIN_SECS } });
  lb = await new Balancer(nodes).start();
});

after(async () => {
  for (const c of clients) c.close();
  if (lb) lb.stop();
  for (const gw of nodes) await gw.stop();
  if (redis) redis.stop();
});

const SKIP = !scyllaNodes && 'CORECAST_TEST_SCYLLA_NODES is not set (Cassandra: scripts/cassandra.sh start)';

test('a rolling restart with the graceful drain loses no message: every member has every acked message once, in id order', { skip: SKIP, timeout: 240_000 }, async () => {
  const users = Array.from({ length: 9 }, (_, i) => 7301 + i);
  for (const u of users) await nodes[0].putUser(u);
  const gid = `js-rolling-${crypto.randomBytes(4).toString('hex')}`;
  await nodes[0].putGroup(gid, users);
  for (const u of users) clients.push(await member(lb, nodes[0], u));
  assert.deepEqual(lb.routed, [3, 3, 3], 'the balancer spread the members over the nodes');

  // Three senders, each sending its next message 50 ms after the previous one was acked.
  const sent = []; // { clientMsgId, id, errors }
  let stopping = false;
  const senders = clients.slice(0, 3).map(async (c, n) => {
    for (let i = 0; !stopping; i++) {
      const clientMsgId = `s${n}-${i}`;
      const { ack, errors } = await sendUntilAcked(
        c, { groupId: gid, text: clientMsgId, attachments: [], clientMsgId }, Date.now() + 60_000);
      sent.push({ clientMsgId, id: ack.id, errors });
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  });
  const ackedAtLeast = (n) => until(`${n} messages acked`, async () => sent.length >= n, 60_000);
  await ackedAtLeast(20);

  // One node at a time: SIGTERM (the drain), its exit, the start under the same node id, its
  // /readyz, every node seeing the three; then the next.
  const atStart = sent.length;
  for (const [i, gw] of nodes.entries()) {
    const { code, signal } = await gw.stop();
    assert.deepEqual({ code, signal }, { code: 0, signal: null }, `node ${i} exited by itself`);
    await gw.start();
    await gw.waitReady(120_000);
    for (const other of nodes) await seesNodes(other, NODES);
  }
  assert.ok(sent.length > atStart, 'messages were acked during the rolling restart');
  await ackedAtLeast(sent.length + 20);
  stopping = true;
  await Promise.all(senders);

  // Every node was seen draining by the balancer's health check, and every member was drained
  // at least once and came back, recovered each time.
  for (const [i, seen] of lb.reasons.entries()) {
    assert.ok(seen.has('draining'), `node ${i}'s /readyz said draining: ${[...seen]}`);
  }
  // (socket.io-client reports `disconnect` also for a reconnection whose transport closed
  // before its CONNECT was answered, say on a node that began to drain: more disconnects than
  // reconnects is no fault.)
  await until('every member connected again', async () => clients.every((c) => c.socket.connected), 15_000)
    .catch((err) => {
      throw new Error(`${err.message}: ${clients.map((c) => `${c.name} connected=${c.socket.connected} ` +
        `active=${c.socket.active} disconnects=${c.disconnects} reconnects=${c.reconnects} ` +
        `errors=${JSON.stringify(c.events.filter((e) => e.event === 'connect_error').map((e) => e.payload))}`).join('; ')}`);
    });
  for (const c of clients) {
    assert.ok(c.disconnects >= 1, `${c.name} was never drained`);
    assert.ok(c.reconnects.length >= 1, `${c.name} never came back`);
    assert.ok(c.reconnects.every((r) => r === true), `${c.name}: recovered ${c.reconnects}`);
  }

  // One id per clientMsgId, distinct ids, and the store holds exactly those.
  const ids = sent.map((s) => s.id);
  assert.equal(new Set(ids).size, ids.length, 'two clientMsgIds got one id');
  const marker = await sendUntilAcked(clients[0],
    { groupId: gid, text: 'marker', attachments: [], clientMsgId: 'marker' }, Date.now() + 30_000);
  const expected = [...ids, marker.ack.id].sort((a, b) => (BigInt(a) < BigInt(b) ? -1 : 1));
  const stored = [];
  for (let before; ;) {
    const page = await nodes[1].history(gid, { limit: 500, before });
    stored.push(...page.map((m) => m.id));
    if (page.length < 500) break;
    before = page[page.length - 1].id;
  }
  assert.deepEqual([...stored].reverse(), expected, 'the store holds each message once');

  // A failed send said why: the server's storage_unavailable (the owner node was not there
  // to take it), or the client's own error when its connection was drained; never silence.
  const errors = sent.flatMap((s) => s.errors);
  const allowed = new Set(['storage_unavailable', 'client: socket has been disconnected']);
  assert.deepEqual(errors.filter((e) => !allowed.has(e.code)), [], 'no ack timed out');

  const got = new Map();
  for (const c of clients) {
    await c.waitFor('newMessage', (m) => m.id === marker.ack.id, 30_000);
    got.set(c, c.events.filter((e) => e.event === 'newMessage' && e.payload.groupId === gid)
      .map((e) => e.payload.id));
  }
  for (const [c, mine] of got) {
    const lost = expected.filter((id) => !mine.includes(id));
    if (lost.length) {
      const who = [...got].filter(([, g]) => !g.includes(lost[0])).map(([x]) => x.name);
      const text = (id) => sent.find((x) => x.id === id)?.clientMsgId;
      console.log(`${c.name} missed ${lost.map(text)}; members missing it: ${who}; its send: ` +
        `${JSON.stringify(sent.find((x) => x.id === lost[0]))}; ${c.name}'s timeline: ` +
        `${c.events.filter((e) => e.event === 'disconnect' || e.event === 'reconnect' ||
          (e.event === 'newMessage' && Math.abs(expected.indexOf(e.payload.id) - expected.indexOf(lost[0])) <= 3))
          .map((e) => (e.event === 'newMessage' ? e.payload.text : `${e.event} ${JSON.stringify(e.payload)}`))}`);
    }
  }
  for (const [c, mine] of got) {
    const want = expected;
    const dup = mine.length - new Set(mine).size;
    const missing = want.filter((id) => !mine.includes(id));
    assert.deepEqual(mine, want, `${c.name}: ${mine.length} messages of ${want.length}, ` +
      `${dup} duplicates, missing ${missing.slice(0, 5)}, reconnects ${c.reconnects.length}`);
  }
  console.log(`rolling restart: ${sent.length} messages acked, ${errors.length} failed sends ` +
    `resent (${[...new Set(errors.map((e) => e.code))]}), balancer routed ${lb.routed}`);
});

