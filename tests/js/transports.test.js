'use strict';
// socket.io-client's transports against the gateway, as a stock client uses them: the default
// (HTTP long-polling first, then the upgrade to WebSocket), polling alone through the whole chat
// flow, and an upgrade in the middle of a stream of messages (nothing lost or duplicated).

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const { NodeXHR, NodeWebSocket } = require('engine.io-client');
const { fileGateway } = require('./helpers');

/** The stock WebSocket transport, opening 300 ms late: a slow network's upgrade, so that
 * messages arrive over polling before the switch. */
class SlowWebSocket extends NodeWebSocket {
  doOpen() { setTimeout(() => super.doOpen(), 300); }
}

const fx = fileGateway(9000);
const { client, group } = fx;

/** A stock client in its default configuration; resolves on `connect` with the transports it
 * went through. */
function defaultClient(userId) {
  const socket = io(fx.gw.url, { auth: { token: fx.gw.token(userId) }, forceNew: true, reconnection: false });
  const transports = [socket.io.engine.transport.name];
  socket.io.engine.on('upgrade', (t) => transports.push(t.name));
  fx.track({ close: () => socket.disconnect() });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve({ socket, transports }));
    socket.once('connect_error', reject);
  });
}

function waitUntil(cond, what, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      if (cond()) return resolve();
      if (Date.now() - started > timeoutMs) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 10); // polling a condition the test set up, not standing in for an event
    };
    tick();
  });
}

test('default transports: polling first, then the upgrade to websocket', async () => {
  const { gid, users: [a] } = await group(1);
  const { socket, transports } = await defaultClient(a);
  assert.equal(transports[0], 'polling');
  await waitUntil(() => transports.includes('websocket'), 'the upgrade');
  assert.deepEqual(transports, ['polling', 'websocket']);
  const ack = await socket.emitWithAck('sendMessage', { groupId: gid, text: 'upgraded', attachments: [] });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(socket.io.engine.transport.name, 'websocket');
});

test('polling only, through the whole chat flow', async () => {
  const { gid, users: [a, b] } = await group(2);
  const cb = await client(b);
  const ca = await client(a, { io: { transports: ['polling'] } });
  assert.equal(ca.socket.io.engine.transport.name, 'polling');
  await cb.waitFor('userOnline', (p) => p.userId === a && p.isOnline === true);
  const ack = await ca.call('sendMessage', { groupId: gid, text: 'by polling', attachments: [] });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  await ca.waitFor('newMessage', (m) => m.id === ack.id);
  const m = await cb.waitFor('newMessage', (p) => p.id === ack.id);
  assert.equal(m.text, 'by polling');
  const reply = await cb.call('sendMessage', { groupId: gid, text: 'back', attachments: [] });
  await ca.waitFor('newMessage', (p) => p.id === reply.id);
  assert.equal((await ca.call('markAsRead', { groupId: gid, messageId: reply.id })).ok, true);
  await cb.waitFor('messageRead', (p) => p.messageId === reply.id && p.userId === a);
  assert.equal((await ca.call('leaveGroup', { groupId: gid })).ok, true);
  assert.equal((await ca.call('joinGroup', { groupId: gid })).ok, true);
  assert.equal(ca.socket.io.engine.transport.name, 'polling', 'never upgraded');
  ca.close();
  await cb.waitFor('userOnline', (p) => p.userId === a && p.isOnline === false);
});

test('an upgrade while messages flow loses and duplicates nothing', async () => {
  // A sender streams numbered messages; a stock client (its WebSocket slow to open) connects
  // in the middle and upgrades from polling to websocket while they keep coming. From the first
  // message it receives on, it must get every later one exactly once, in order, over both
  // transports.
  {
    const { gid, users: [sender, receiver] } = await group(2);
    const cs = await client(sender, { io: { transports: ['websocket'] } });
    let next = 0;
    let streaming = true;
    const acks = [];
    const stream = (async () => {
      while (streaming) {
        acks.push(cs.call('sendMessage', { groupId: gid, text: String(next++), attachments: [] }));
        await new Promise((r) => setTimeout(r, 2)); // the stream's pace
      }
    })();
    await waitUntil(() => next >= 20, 'the stream to start');
    const socket = io(fx.gw.url, {
      auth: { token: fx.gw.token(receiver) }, forceNew: true, reconnection: false,
      transports: [NodeXHR, SlowWebSocket],
    });
    fx.track({ close: () => socket.disconnect() });
    const got = [];
    socket.on('newMessage', (m) => got.push({ n: Number(m.text), transport: socket.io.engine.transport.name }));
    await new Promise((resolve, reject) => { socket.once('connect', resolve); socket.once('connect_error', reject); });
    await waitUntil(() => socket.io.engine.transport.name === 'websocket', 'the upgrade');
    const upgradedAt = next;
    await waitUntil(() => next >= upgradedAt + 50, 'messages after the upgrade');
    streaming = false;
    await stream;
    for (const a of await Promise.all(acks)) assert.equal(a.ok, true, JSON.stringify(a));
    const last = next - 1;
    await waitUntil(() => got.length > 0 && got[got.length - 1].n === last, `message ${last}`);
    const numbers = got.map((g) => g.n);
    const first = numbers[0];
    assert.deepEqual(numbers, Array.from({ length: last - first + 1 }, (_, i) => first + i),
      'every message from the first received on, once, in order');
    assert.equal(got[0].transport, 'polling', 'the first messages came over polling');
    assert.equal(got[got.length - 1].transport, 'websocket', 'the last over websocket');
    socket.disconnect();
  }
});
