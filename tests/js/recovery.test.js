'use strict';
// Connection state recovery with the stock socket.io-client: the CONNECT answer's pid, the
// offset after each stored event, and the messages missed while away replayed from the store,
// before anything new, once each, in each group's order, with `socket.recovered === true`.
// Also the cases where socket.io's own server fails its users (socket.io issues #5538, #4880,
// #5419, #4968), a forged or borrowed pid, the limits, and a kill -9.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { connect, fileGateway, startGateway } = require('./helpers');

const fx = fileGateway(7000);
const { client, group } = fx;

/** Connects `c` again (as its manager's reconnection would) and resolves once connected. */
function reconnect(c) {
  const back = new Promise((resolve) => c.socket.once('connect', resolve));
  c.socket.connect();
  return back;
}

/**
 * Drops `c`'s transport, runs `whileAway`, then reconnects. The clients here do not
 * reconnect by themselves, so that what is sent meanwhile is missed for sure.
 */
async function dropAndReconnect(c, whileAway = async () => {}) {
  c.socket.io.engine.close();
  await c.waitFor('disconnect');
  await whileAway();
  await reconnect(c);
}

/** What `c` has received of `event` in group `gid`, in arrival order, as texts. */
function texts(c, gid, event = 'newMessage') {
  return c.events.filter((e) => e.event === event && e.payload.groupId === gid).map((e) => e.payload.text);
}

/** Group `gid`'s stream as `c` received it: its messages and read receipts, in arrival order. */
function stream(c, gid) {
  return c.events
    .filter((e) => (e.event === 'newMessage' || e.event === 'messageRead') && e.payload.groupId === gid)
    .map((e) => (e.event === 'newMessage' ? `message ${e.payload.text}` : `read ${e.payload.messageId} by ${e.payload.userId}`));
}

/**
 * Runs `body({ gw, gid, users })` against a gateway of its own started with `env`, with `n`
 * fresh users in a fresh group; the clients it connects through `connectTo` are closed, and
 * the gateway stopped, afterwards.
 */
async function ownGateway(env, n, body) {
  const gw = await startGateway(env);
  const open = [];
  try {
    if (env.CORECAST_STORE === 'scylla') await gw.waitReady();
    const users = [];
    for (let i = 0; i < n; i++) {
      users.push(fx.fresh());
      await gw.putUser(users[i]);
    }
    const gid = `g-${fx.fresh()}`;
    await gw.putGroup(gid, users);
    const connectTo = async (u, opts) => {
      const c = await connect(gw, u, opts);
      open.push(c);
      return c;
    };
    await body({ gw, gid, users, connectTo });
  } finally {
    for (const c of open) c.close();
    await gw.stop();
  }
}

async function send(c, gid, text) {
  const ack = await c.call('sendMessage', { groupId: gid, text, attachments: [] });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  return ack;
}

test('the CONNECT answer carries a pid and every stored event an offset as its last argument', async () => {
  const { gid, users: [a, b] } = await group(2);
  const ca = await client(a);
  const cb = await client(b);
  assert.match(cb.socket._pid, /^[0-9a-z]+\.[0-9a-z]+\.[0-9a-f]{32}$/);
  const ack = await send(ca, gid, 'one');
  await cb.waitFor('newMessage', (m) => m.id === ack.id);
  const got = cb.events.find((e) => e.event === 'newMessage');
  assert.equal(got.extra.length, 1, 'one argument after the message');
  assert.equal(typeof got.extra[0], 'string');
  assert.equal(cb.socket._lastOffset, got.extra[0], 'the client keeps it');
  assert.deepEqual(await cb.call('markAsRead', { groupId: gid, messageId: ack.id }), { ok: true });
  await ca.waitFor('messageRead', (r) => r.userId === b);
  const read = ca.events.find((e) => e.event === 'messageRead');
  assert.equal(typeof read.extra[0], 'string', 'messageRead carries one too');
  await ca.waitFor('userOnline', (p) => p.userId === b && p.isOnline === true);
  const online = ca.events.find((e) => e.event === 'userOnline' && e.payload.userId === b);
  assert.deepEqual(online.extra, [], 'userOnline is not stored: no offset');
});

test('after a dropped transport the client gets what it missed, once, in order, before anything new, and recovered is true', async () => {
  const { gid, users: [a, b] } = await group(2);
  const other = await group(2);
  await fx.gw.putGroup(other.gid, [a, b]);
  const ca = await client(a);
  const cb = await client(b);
  await send(ca, gid, 'before');
  await cb.waitFor('newMessage', (m) => m.text === 'before');
  await dropAndReconnect(cb, async () => {
    for (let i = 0; i < 3; i++) {
      await send(ca, gid, `away ${i}`);
      await send(ca, other.gid, `elsewhere ${i}`);
    }
  });
  assert.equal(cb.socket.recovered, true);
  await send(ca, gid, 'after');
  await cb.waitFor('newMessage', (m) => m.text === 'after');
  assert.deepEqual(texts(cb, gid), ['before', 'away 0', 'away 1', 'away 2', 'after']);
  assert.deepEqual(texts(cb, other.gid), ['elsewhere 0', 'elsewhere 1', 'elsewhere 2']);
});

test('read receipts made while away are replayed with the missed messages, in the group\'s order, once each', async () => {
  const { gid, users: [a, b, c] } = await group(3);
  const ca = await client(a);
  const cb = await client(b);
  const cc = await client(c);
  const seen = await send(ca, gid, 'seen');
  await cb.waitFor('newMessage', (m) => m.id === seen.id);
  await cc.waitFor('newMessage', (m) => m.id === seen.id);
  const read = async (id) => assert.deepEqual(await cc.call('markAsRead', { groupId: gid, messageId: id }), { ok: true });
  let missed;
  await dropAndReconnect(cb, async () => {
    await read(seen.id);
    missed = await send(ca, gid, 'missed');
    await cc.waitFor('newMessage', (m) => m.id === missed.id);
    await read(missed.id);
    await read(missed.id); // read twice: one receipt
  });
  assert.equal(cb.socket.recovered, true);
  const after = await send(ca, gid, 'after');
  await cb.waitFor('newMessage', (m) => m.id === after.id);
  const expected = ['message seen', `read ${seen.id} by ${c}`, 'message missed', `read ${missed.id} by ${c}`, 'message after'];
  assert.deepEqual(stream(cb, gid), expected);
  const receipt = cb.events.find((e) => e.event === 'messageRead');
  assert.equal(typeof receipt.extra[0], 'string', 'a replayed receipt carries its offset');
  // Nothing new meanwhile: a second recovery replays nothing again.
  await dropAndReconnect(cb);
  assert.equal(cb.socket.recovered, true);
  const last = await send(ca, gid, 'last');
  await cb.waitFor('newMessage', (m) => m.id === last.id);
  assert.deepEqual(stream(cb, gid), [...expected, 'message last']);
});

test('a client that had received nothing yet (a pid, no offset) recovers what was sent while away (#5538)', async () => {
  const { gid, users: [a, b] } = await group(2);
  const ca = await client(a);
  const cb = await client(b);
  assert.equal(cb.socket._lastOffset, undefined, 'no event received: no offset');
  await dropAndReconnect(cb, () => send(ca, gid, 'while away'));
  assert.equal(cb.socket.recovered, true);
  await cb.waitFor('newMessage', (m) => m.text === 'while away');
  assert.deepEqual(texts(cb, gid), ['while away']);
});

test('recovery several times in a row, once while the server still holds the half-dead transport (#4880), and the offset moves on after a recovery that replayed nothing (#5419)', async () => {
  const { gid, users: [a, b] } = await group(2);
  const ca = await client(a);
  const cb = await client(b);
  await send(ca, gid, 'm0');
  await cb.waitFor('newMessage', (m) => m.text === 'm0');
  // A recovery that replays nothing...
  await dropAndReconnect(cb);
  assert.equal(cb.socket.recovered, true);
  const before = cb.socket._lastOffset;
  // ...then the offset moves forward with the next message.
  await send(ca, gid, 'm1');
  await cb.waitFor('newMessage', (m) => m.text === 'm1');
  assert.notEqual(cb.socket._lastOffset, before);
  // The transport dies without the server noticing, as after a network change: nothing more
  // goes in or out of its socket, and the client gives it up and reconnects at once.
  const engine = cb.socket.io.engine;
  const dead = engine.transport.ws._socket;
  dead.pause();
  dead.write = () => true;
  dead.end = () => dead;
  engine.transport.onClose({ description: 'network changed' });
  await cb.waitFor('disconnect');
  await send(ca, gid, 'm2');
  const online = await ca.call('getOnline', { groupId: gid });
  assert.ok(online.online.includes(b), `the server still holds b's old transport: ${JSON.stringify(online)}`);
  await reconnect(cb);
  assert.equal(cb.socket.recovered, true);
  await send(ca, gid, 'm3');
  await cb.waitFor('newMessage', (m) => m.text === 'm3');
  await dropAndReconnect(cb, () => send(ca, gid, 'm4'));
  assert.equal(cb.socket.recovered, true);
  await send(ca, gid, 'm5');
  await cb.waitFor('newMessage', (m) => m.text === 'm5');
  assert.deepEqual(texts(cb, gid), ['m0', 'm1', 'm2', 'm3', 'm4', 'm5']);
});

test('a recovered client hears the presence changes of co-members while it was away', async () => {
  const { users: [a, b, c, d] } = await group(4);
  const ca = await client(a);
  const cb = await client(b);
  const cd = await client(d);
  await cb.waitFor('userOnline', (p) => p.userId === d && p.isOnline === true);
  cb.socket.io.engine.close();
  await cb.waitFor('disconnect');
  // While b is away, c comes online and d goes offline (announced once the debounce window
  // has passed: a, who stayed, hears both).
  await client(c);
  await ca.waitFor('userOnline', (p) => p.userId === c && p.isOnline === true);
  cd.close();
  await ca.waitFor('userOnline', (p) => p.userId === d && p.isOnline === false);
  const before = cb.events.length;
  await reconnect(cb);
  assert.equal(cb.socket.recovered, true);
  await cb.waitFor('userOnline', (p) => p.userId === c && p.isOnline === true);
  await cb.waitFor('userOnline', (p) => p.userId === d && p.isOnline === false);
  const news = cb.events.slice(before).filter((e) => e.event === 'userOnline');
  assert.deepEqual(news.map((e) => [e.payload.userId, e.payload.isOnline]).filter(([u]) => u !== a && u !== b),
    [[c, true], [d, false]], 'once each, the current state');
});

test('recovery over long-polling (#4968)', async () => {
  const { gid, users: [a, b] } = await group(2);
  const ca = await client(a);
  const cb = await client(b, { io: { transports: ['polling'] } });
  assert.equal(cb.socket.io.engine.transport.name, 'polling');
  await send(ca, gid, 'p0');
  await cb.waitFor('newMessage', (m) => m.text === 'p0');
  await dropAndReconnect(cb, async () => {
    await send(ca, gid, 'p1');
    await send(ca, gid, 'p2');
  });
  assert.equal(cb.socket.recovered, true);
  assert.equal(cb.socket.io.engine.transport.name, 'polling');
  await send(ca, gid, 'p3');
  await cb.waitFor('newMessage', (m) => m.text === 'p3');
  assert.deepEqual(texts(cb, gid), ['p0', 'p1', 'p2', 'p3']);
});

test('a forged pid, or another user\'s, gets a fresh session: recovered is false', async () => {
  const { gid, users: [a, b] } = await group(2);
  const ca = await client(a);
  const cb = await client(b);
  await send(ca, gid, 'seen');
  await cb.waitFor('newMessage', (m) => m.text === 'seen');
  const own = cb.socket._pid;
  const forged = own.slice(0, -1) + (own.endsWith('0') ? '1' : '0');
  for (const pid of [forged, ca.socket._pid]) {
    cb.socket._pid = pid;
    await dropAndReconnect(cb, () => send(ca, gid, `missed with ${pid}`));
    assert.equal(cb.socket.recovered, false, pid);
    assert.notEqual(cb.socket._pid, pid, 'a new pid');
  }
  assert.deepEqual(texts(cb, gid), ['seen'], 'nothing replayed');
});

test('past the event limit, the window or the queue\'s room, a fresh session: recovered is false and the client reloads', async () => {
  const long = (c) => c.repeat(3000);
  for (const [env, sent] of [
    [{ CORECAST_RECOVERY_MAX_EVENTS: '2' }, ['x', 'y', 'z']],
    [{ CORECAST_RECOVERY_MAX_AGE: '0' }, ['x', 'y', 'z']],
    // More than half the outbound queue's bound: they would be queued at once.
    [{ CORECAST_OUTBOUND_QUEUE_BYTES: '16384' }, [long('x'), long('y'), long('z')]],
  ]) {
    await ownGateway(env, 2, async ({ gid, users: [a, b], connectTo }) => {
      const ca = await connectTo(a);
      const cb = await connectTo(b);
      await dropAndReconnect(cb, async () => {
        for (const t of sent) await send(ca, gid, t);
      });
      assert.equal(cb.socket.recovered, false, JSON.stringify(env));
      const page = await cb.call('getMessages', { groupId: gid });
      assert.deepEqual(page.messages.map((m) => m.text), [...sent].reverse(), 'the history has them');
      assert.deepEqual(texts(cb, gid), [], 'nothing replayed');
    });
  }
});

test('with CORECAST_RECOVERY=false there is no pid and no offset', async () => {
  await ownGateway({ CORECAST_RECOVERY: 'false' }, 1, async ({ gid, users: [a], connectTo }) => {
    const ca = await connectTo(a);
    assert.equal(ca.socket._pid, undefined);
    await send(ca, gid, 'plain');
    await ca.waitFor('newMessage', (m) => m.text === 'plain');
    assert.deepEqual(ca.events.find((e) => e.event === 'newMessage').extra, []);
  });
});

/** A gateway killed with SIGKILL and started again: the client that was connected recovers. */
async function recoversAcrossKill9(env) {
  await ownGateway(env, 3, async ({ gw, gid, users: [a, b, c], connectTo }) => {
    const ca = await connectTo(a);
    const cb = await connectTo(b);
    const ack = await send(ca, gid, 'before the crash');
    await cb.waitFor('newMessage', (m) => m.id === ack.id);
    ca.close();
    await gw.kill9();
    await cb.waitFor('disconnect');
    await gw.start();
    if (env.CORECAST_STORE === 'scylla') await gw.waitReady();
    // Read and sent while b is away, by clients of the restarted gateway.
    const cc = await connectTo(c);
    assert.deepEqual(await cc.call('markAsRead', { groupId: gid, messageId: ack.id }), { ok: true });
    const ca2 = await connectTo(a);
    await send(ca2, gid, 'after the restart 1');
    await send(ca2, gid, 'after the restart 2');
    await reconnect(cb);
    assert.equal(cb.socket.recovered, true);
    await send(ca2, gid, 'live');
    await cb.waitFor('newMessage', (m) => m.text === 'live');
    assert.deepEqual(stream(cb, gid), ['message before the crash', `read ${ack.id} by ${c}`,
      'message after the restart 1', 'message after the restart 2', 'message live']);
  });
}

test('recovery across a gateway kill -9 and restart, on the embedded store', async () => {
  await recoversAcrossKill9({});
});

const scyllaNodes = process.env.CORECAST_TEST_SCYLLA_NODES;
test('recovery across a gateway kill -9 and restart, on Cassandra', { skip: !scyllaNodes && 'CORECAST_TEST_SCYLLA_NODES is not set' }, async () => {
  const keyspace = `corecast_js_${process.pid}_${Date.now() % 1e6}`;
  await recoversAcrossKill9({ CORECAST_STORE: 'scylla', CORECAST_SCYLLA_NODES: scyllaNodes, CORECAST_SCYLLA_KEYSPACE: keyspace });
});
