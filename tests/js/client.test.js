'use strict';
// The official socket.io-client v4 against the gateway: connect, emit with and without ack,
// receive, error events, bad tokens as connect_error, disconnect. One gateway for the file.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { startGateway, connect } = require('./helpers');

let gw;
let clients = [];
let nextId = 5000;
const fresh = () => nextId++;

before(async () => { gw = await startGateway(); });
after(async () => { if (gw) await gw.stop(); });
afterEach(() => { for (const c of clients) c.close(); clients = []; });

async function client(userId, opts) {
  const c = await connect(gw, userId, opts);
  clients.push(c);
  return c;
}

async function group(n) {
  const users = [];
  for (let i = 0; i < n; i++) {
    const u = fresh();
    await gw.putUser(u);
    users.push(u);
  }
  const gid = fresh();
  await gw.putGroup(gid, users);
  return { gid, users };
}

test('connect, emit with ack, receive on every member', async () => {
  const { gid, users: [a, b] } = await group(2);
  const ca = await client(a);
  const cb = await client(b);
  assert.ok(ca.socket.connected && ca.socket.id, 'connected with a sid');
  const ack = await ca.call('sendMessage', { groupId: gid, text: 'from js', attachments: [] });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.match(ack.id, /^\d+$/);
  assert.match(ack.timestamp, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
  for (const c of [ca, cb]) {
    const m = await c.waitFor('newMessage', (p) => p.id === ack.id);
    assert.deepEqual(m, { id: ack.id, senderId: a, groupId: gid, text: 'from js', attachments: [],
      timestamp: ack.timestamp, readBy: [] });
  }
});

test('emit without ack is broadcast', async () => {
  const { gid, users: [a, b] } = await group(2);
  const ca = await client(a);
  const cb = await client(b);
  ca.emit('sendMessage', { groupId: gid, text: 'fire and forget', attachments: [] });
  const m = await cb.waitFor('newMessage', (p) => p.text === 'fire and forget');
  assert.equal(m.senderId, a);
});

test('a failure without ack arrives as an error event, with ack as ok:false', async () => {
  const { gid, users: [a] } = await group(1);
  const ca = await client(a);
  ca.emit('sendMessage', { groupId: gid, text: '', attachments: [] });
  const err = await ca.waitFor('error');
  assert.equal(err.code, 'invalid_payload');
  assert.ok(err.message);
  const ack = await ca.call('sendMessage', { groupId: fresh(), text: 'x', attachments: [] });
  assert.equal(ack.ok, false);
  assert.equal(ack.error.code, 'not_member');
  assert.ok(ack.error.message);
});

test('joinGroup, markAsRead and messageRead', async () => {
  const { gid, users: [a, b] } = await group(2);
  const ca = await client(a);
  const cb = await client(b);
  assert.deepEqual(await cb.call('joinGroup', { groupId: gid }), { ok: true, groupId: gid });
  const ack = await ca.call('sendMessage', { groupId: gid, text: 'read me', attachments: [] });
  assert.deepEqual(await cb.call('markAsRead', { messageId: ack.id, groupId: gid }), { ok: true });
  const r = await ca.waitFor('messageRead', (p) => p.messageId === ack.id);
  assert.deepEqual(r, { messageId: ack.id, userId: b, groupId: gid });
});

test('a bad token is a connect_error with the message', async () => {
  const c = await connect(gw, null, { token: 'not-a-jwt', expectFailure: true });
  assert.match(c.connectError.message, /token/i);
});

test('an expired token is a connect_error saying so', async () => {
  const now = Math.floor(Date.now() / 1000);
  const token = gw.token(fresh(), { exp: now - 120, iat: now - 3600 });
  const c = await connect(gw, null, { token, expectFailure: true });
  assert.match(c.connectError.message, /expired/i);
});

test('disconnect: the client sees it and co-members see the user go offline', async () => {
  const { users: [a, b] } = await group(2);
  const cb = await client(b);
  const ca = await client(a);
  await cb.waitFor('userOnline', (p) => p.userId === a && p.isOnline === true);
  ca.close();
  assert.equal(await ca.waitFor('disconnect'), 'io client disconnect');
  await cb.waitFor('userOnline', (p) => p.userId === a && p.isOnline === false);
});
