'use strict';
// The demo page's route on the internal listener, over plain HTTP (no browser; the page itself
// is driven in Chromium by browser.test.js): served without the admin token, config.js names the
// public listener, the vendored socket.io-client bundle is the pinned one, CORECAST_DEMO=false
// turns it off.

const { test, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { startGateway } = require('./helpers');

const TIMEOUT_MS = 10_000;
let gw;

afterEach(async (t) => {
  if (gw) {
    await gw.stop();
    if (t && t.passed === false) console.error(`--- ${gw.logPath}\n${gw.logTail(60)}`);
    gw = null;
  }
});

/** GET on the internal listener with no Authorization header, as a browser sends it. */
async function get(path) {
  const res = await fetch(`http://${gw.internal}${path}`, { signal: AbortSignal.timeout(TIMEOUT_MS) });
  return { status: res.status, type: res.headers.get('content-type'), body: Buffer.from(await res.arrayBuffer()) };
}

test('the demo page and its assets are served without the admin token', async () => {
  gw = await startGateway();
  for (const path of ['/demo/', '/demo']) {
    const page = await get(path);
    assert.equal(page.status, 200, path);
    assert.match(page.type, /^text\/html/);
    const html = page.body.toString();
    for (const asset of ['/demo/config.js', '/demo/socket.io.min.js', '/demo/app.js', '/demo/style.css']) {
      assert.ok(html.includes(asset), `the page loads ${asset}`);
      const a = await get(asset);
      assert.equal(a.status, 200, asset);
      assert.match(a.type, asset.endsWith('.css') ? /^text\/css/ : /^text\/javascript/, asset);
    }
  }
  assert.equal((await get('/demo/nope.js')).status, 404);
  // The admin API still wants its token.
  assert.equal((await get('/api/users/1')).status, 401);
});

test('config.js tells the page where the public listener is', async () => {
  gw = await startGateway({ CORECAST_PATH: '/chat/' });
  const js = (await get('/demo/config.js')).body.toString();
  const m = /window\.CORECAST_DEMO = (\{.*\});/.exec(js);
  assert.ok(m, js);
  const config = JSON.parse(m[1]);
  assert.equal(config.publicUrl, gw.url, 'the bound address, not the configured port 0');
  assert.equal(config.path, '/chat/');
});

test('the vendored socket.io-client bundle is the one tests/js pins, byte for byte', async () => {
  gw = await startGateway();
  const served = (await get('/demo/socket.io.min.js')).body;
  const pinned = require('socket.io-client/package.json').version;
  const npmDir = path.dirname(require.resolve('socket.io-client/package.json'));
  const npmFile = fs.readFileSync(path.join(npmDir, 'dist', 'socket.io.min.js'));
  assert.ok(served.toString().startsWith(`/*!\n * Socket.IO v${pinned}\n`),
    `gateway/demo/socket.io.min.js is not socket.io-client ${pinned}; refresh it (gateway/demo/README.md)`);
  assert.ok(served.equals(npmFile), 'gateway/demo/socket.io.min.js differs from the npm package\'s file');
  assert.match(served.toString(), /Released under the MIT License/);
});

test('CORECAST_DEMO=false turns the demo route off', async () => {
  gw = await startGateway({ CORECAST_DEMO: 'false' });
  assert.equal((await get('/demo/')).status, 404);
  assert.equal((await get('/demo/socket.io.min.js')).status, 404);
  assert.equal((await get('/healthz')).status, 200);
});
