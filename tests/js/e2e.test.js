'use strict';
// End-to-end check with the official JavaScript client (socket.io-client v4).

const { test, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { startGateway, connect } = require('./helpers');

let gw;
let clients = [];

beforeEach(async () => {
  gw = await startGateway();
  clients = [];
});

afterEach(async (t) => {
  for (const c of clients) c.close();
  if (gw) {
    await gw.stop();
    if (t && t.passed === false) console.error(`--- ${gw.logPath}\n${gw.logTail(60)}`);
  }
});

function isUtcIso8601(ts) {
  return typeof ts === 'string' && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$/.test(ts) &&
    !Number.isNaN(Date.parse(ts));
}

test('a group message reaches the other member', async () => {
  await gw.putUser(1, 'alice@example.test', 'Alice');
  await gw.putUser(2, 'bob@example.test', 'Bob');
  await gw.putGroup(10, [1, 2], 'general');
  const alice = await connect(gw, 1);
  clients.push(alice);
  const bob = await connect(gw, 2);
  clients.push(bob);
  // Joining explicitly (acked) means the message below cannot race the subscription.
  for (const c of [alice, bob]) {
    const joined = await c.call('joinGroup', { groupId: 10 });
    assert.equal(joined.ok, true, JSON.stringify(joined));
  }

  const ack = await alice.call('sendMessage', { groupId: 10, text: 'hi', attachments: [] });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.ok(ack.id, 'ack carries the message id');
  assert.ok(isUtcIso8601(ack.timestamp), `ack timestamp ${ack.timestamp}`);

  const msg = await bob.waitFor('newMessage', (m) => m && m.id === ack.id);
  assert.equal(msg.senderId, 1);
  assert.equal(msg.groupId, '10'); // group ids are strings; the number 10 names the group "10"
  assert.equal(msg.text, 'hi');
  assert.deepEqual(msg.attachments, []);
  assert.deepEqual(msg.readBy, [1]); // the sender has read it
  assert.equal(msg.timestamp, ack.timestamp);
  assert.ok(isUtcIso8601(msg.timestamp), `timestamp ${msg.timestamp}`);
});

test('a bad token is refused with a connect_error that mentions the token', async () => {
  const c = await connect(gw, null, { token: 'not-a-jwt', expectFailure: true });
  assert.match(c.connectError.message, /token/i);
});
