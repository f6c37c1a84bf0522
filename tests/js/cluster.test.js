'use strict';
// Cluster mode (issue 18) with the official JavaScript client: three `corecast serve` nodes on
// one redis-server of this file's own and one Cassandra (CORECAST_TEST_SCYLLA_NODES), clients
// with socket.io-client's defaults (polling first, then the WebSocket upgrade), each on one
// node, and behind HAProxy (Debian's `haproxy`) balancing every request round-robin.
// socket.io-client hands events over in the order they came off the wire, so the order
// checked is the gateway's. tests/python/test_cluster.py covers more (a Redis restart, read
// receipts, membership changes), test_cluster_lb.py the forwarding by hand and `mode tcp`.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { io } = require('socket.io-client');
const {
  ChatClient, connect, freePort, until, metric, startRedis, startCluster,
} = require('./helpers');

const scyllaNodes = process.env.CORECAST_TEST_SCYLLA_NODES;
const NODES = 3;

let redis;
let haproxy;
let nodes = [];
const clients = [];

before(async () => {
  if (!scyllaNodes) return;
  redis = await startRedis();
  nodes = await startCluster({ n: NODES, redisUrl: redis.url, scyllaNodes, prefix: 'js-node' });
});

after(async () => {
  for (const c of clients) c.close();
  for (const gw of nodes) await gw.stop();
  if (redis) redis.stop();
  if (haproxy) haproxy.kill('SIGTERM');
});

/** An HAProxy in `mode http` in front of the nodes: it picks a node for every request, with
 * no affinity of any kind. Returns its URL. */
async function startHaproxy() {
  const port = await freePort();
  const servers = nodes.map((gw, i) => `    server node${i} ${gw.public}`).join('\n');
  const config = path.join(os.tmpdir(), `corecast-haproxy-${process.pid}-${port}.cfg`);
  fs.writeFileSync(config, ['global', '    maxconn 4096', 'defaults', '    mode http',
    '    balance roundrobin', '    timeout connect 5s', '    timeout client 60s',
    '    timeout server 60s', '    timeout tunnel 1h', 'frontend chat',
    `    bind 127.0.0.1:${port}`, '    default_backend nodes', 'backend nodes', servers, ''].join('\n'));
  const binary = fs.existsSync('/usr/sbin/haproxy') ? '/usr/sbin/haproxy' : 'haproxy';
  haproxy = spawn(binary, ['-db', '-f', config], { stdio: 'ignore' });
  haproxy.once('error', (e) => { throw new Error(`haproxy: ${e.message} (apt-get install haproxy)`); });
  await until(`haproxy on ${port}`, () => new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  }), 10_000);
  return `http://127.0.0.1:${port}`;
}

test('group messages sent on every node reach every member on every node once, in id order, acked', { skip: !scyllaNodes && 'CORECAST_TEST_SCYLLA_NODES is not set (Cassandra: scripts/cassandra.sh start)', timeout: 120_000 }, async () => {
  const users = [7001, 7002, 7003, 7004, 7005, 7006];
  for (const u of users) await nodes[0].putUser(u);
  const gid = `js-cluster-${crypto.randomBytes(4).toString('hex')}`;
  await nodes[0].putGroup(gid, users);
  for (const [k, u] of users.entries()) clients.push(await connect(nodes[k % NODES], u));
  const senders = clients.slice(0, NODES); // one on each node
  const perSender = 15;
  const acks = (await Promise.all(senders.map(async (c, n) => {
    const mine = [];
    for (let i = 0; i < perSender; i++) {
      mine.push(await c.call('sendMessage', { groupId: gid, text: `s${n}-${i}`, attachments: [] }, 30_000));
    }
    return mine;
  }))).flat();
  for (const a of acks) assert.equal(a.ok, true, JSON.stringify(a));
  const marker = await senders[0].call('sendMessage', { groupId: gid, text: 'marker', attachments: [] });
  assert.equal(marker.ok, true);
  const expected = [...acks.map((a) => a.id), marker.id].sort((a, b) => (BigInt(a) < BigInt(b) ? -1 : 1));
  for (const [k, c] of clients.entries()) {
    await c.waitFor('newMessage', (m) => m.id === marker.id, 30_000);
    const got = c.events.filter((e) => e.event === 'newMessage' && e.payload.groupId === gid)
      .map((e) => e.payload.id);
    assert.deepEqual(got, expected, `member ${k} on node ${k % NODES}`);
  }
});

test('a client recovers on another node what it missed, once and in order, before anything new', { skip: !scyllaNodes && 'CORECAST_TEST_SCYLLA_NODES is not set (Cassandra: scripts/cassandra.sh start)', timeout: 120_000 }, async () => {
  const [reader, sender] = [7101, 7102];
  for (const u of [reader, sender]) await nodes[0].putUser(u);
  const gid = `js-recover-${crypto.randomBytes(4).toString('hex')}`;
  await nodes[0].putGroup(gid, [reader, sender]);
  const cs = await connect(nodes[2], sender);
  clients.push(cs);
  const ca = await connect(nodes[0], reader);
  clients.push(ca);
  const send = async (text) => {
    const ack = await cs.call('sendMessage', { groupId: gid, text, attachments: [] });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    return ack;
  };
  const first = await send('before');
  await ca.waitFor('newMessage', (m) => m.id === first.id);
  const { _pid: pid, _lastOffset: offset } = ca.socket;
  assert.ok(pid && offset, 'a pid and an offset to recover with');
  ca.close();
  await ca.waitFor('disconnect');
  for (const t of ['away 1', 'away 2', 'away 3']) await send(t);

  // Back on another node, with what node 0 gave it, as the client's own reconnection would.
  const cb = new ChatClient(`user${reader}-again`);
  cb.socket = io(nodes[1].url, { path: '/socket.io/', auth: { token: nodes[1].token(reader) },
    reconnection: false, forceNew: true, autoConnect: false });
  cb.socket._pid = pid;
  cb.socket._lastOffset = offset;
  cb.socket.onAny((event, ...args) => cb.record(event, args[0], args.slice(1)));
  clients.push(cb);
  await new Promise((resolve, reject) => {
    cb.socket.once('connect', resolve);
    cb.socket.once('connect_error', reject);
    cb.socket.connect();
  });
  assert.equal(cb.socket.recovered, true, 'recovered on another node');
  const after = await send('after');
  await cb.waitFor('newMessage', (m) => m.id === after.id);
  const texts = cb.events.filter((e) => e.event === 'newMessage' && e.payload.groupId === gid)
    .map((e) => e.payload.text);
  assert.deepEqual(texts, ['away 1', 'away 2', 'away 3', 'after']);
});

test('behind a balancer that picks a node per request, default and polling-only clients get every message once, in order', { skip: !scyllaNodes && 'CORECAST_TEST_SCYLLA_NODES is not set (Cassandra: scripts/cassandra.sh start)', timeout: 120_000 }, async () => {
  const lb = { url: await startHaproxy(), token: (u) => nodes[0].token(u) };
  const users = [7201, 7202, 7203, 7204];
  for (const u of users) await nodes[0].putUser(u);
  const gid = `js-lb-${crypto.randomBytes(4).toString('hex')}`;
  await nodes[0].putGroup(gid, users);
  const forwardedBefore = (await Promise.all(nodes.map((gw) => metric(gw, 'corecast_cluster_forwarded_connections_total'))))
    .reduce((a, b) => a + b, 0);
  // Two with the defaults (polling, then the upgrade), two polling only.
  const mine = [];
  for (const [k, u] of users.entries()) {
    mine.push(await connect(lb, u, k % 2 === 0 ? {} : { io: { transports: ['polling'] } }));
  }
  clients.push(...mine);
  const acks = (await Promise.all(mine.slice(0, 2).map(async (c, n) => {
    const sent = [];
    for (let i = 0; i < 10; i++) {
      sent.push(await c.call('sendMessage', { groupId: gid, text: `s${n}-${i}`, attachments: [] }, 30_000));
    }
    return sent;
  }))).flat();
  for (const a of acks) assert.equal(a.ok, true, JSON.stringify(a));
  const marker = await mine[1].call('sendMessage', { groupId: gid, text: 'marker', attachments: [] });
  assert.equal(marker.ok, true, JSON.stringify(marker));
  const expected = [...acks.map((a) => a.id), marker.id].sort((a, b) => (BigInt(a) < BigInt(b) ? -1 : 1));
  for (const [k, c] of mine.entries()) {
    await c.waitFor('newMessage', (m) => m.id === marker.id, 30_000);
    const got = c.events.filter((e) => e.event === 'newMessage' && e.payload.groupId === gid)
      .map((e) => e.payload.id);
    assert.deepEqual(got, expected, `member ${k} (${c.socket.io.engine.transport.name})`);
  }
  await until('the default clients to upgrade', async () => mine[0].socket.io.engine.transport.name === 'websocket'
    && mine[2].socket.io.engine.transport.name === 'websocket', 15_000);
  assert.equal(mine[1].socket.io.engine.transport.name, 'polling');
  const forwarded = (await Promise.all(nodes.map((gw) => metric(gw, 'corecast_cluster_forwarded_connections_total'))))
    .reduce((a, b) => a + b, 0);
  assert.ok(forwarded - forwardedBefore > users.length, `requests forwarded: ${forwarded - forwardedBefore}`);
});
