'use strict';
// The demo page (gateway/demo/) in a real browser: headless Chromium driven by puppeteer-core.
// Only a browser enforces CORS, so this is where the origin allowlist is proven. The page is
// loaded from the gateway's internal listener, an origin other than the public listener's, and
// is put in CORECAST_ALLOWED_ORIGINS; it connects with socket.io-client's default options
// (polling first, then the upgrade to WebSocket), sends, receives and shows read receipts and
// presence. The same page served from an origin outside the allowlist fails to connect.
//
// Skips when Chromium is not installed, except in CI (CI=true), where that fails. scripts/test.sh
// installs Debian's `chromium`; CORECAST_TEST_CHROMIUM names another Chromium binary.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const puppeteer = require('puppeteer-core');
const { Gateway, connect, startGateway } = require('./helpers');

const TIMEOUT_MS = 10_000;
const LAUNCH_TIMEOUT_MS = 60_000;
// Group ids are opaque strings.
const GROUP = 'team-berlin';
const OTHER_GROUP = 'team-paris';

function findChromium() {
  const candidates = process.env.CORECAST_TEST_CHROMIUM
    ? [process.env.CORECAST_TEST_CHROMIUM]
    : (process.env.PATH || '').split(path.delimiter).flatMap((dir) =>
      ['chromium', 'chromium-browser'].map((name) => path.join(dir, name)));
  return candidates.find((file) => {
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

const chromium = findChromium();
const missing = chromium ? null : (process.env.CORECAST_TEST_CHROMIUM
  ? `CORECAST_TEST_CHROMIUM=${process.env.CORECAST_TEST_CHROMIUM} is not an executable`
  : 'Chromium is not installed (apt-get install chromium; scripts/test.sh installs it)');
// Without Chromium each test skips, saying why; in CI the first test fails instead.
const inCi = process.env.CI === 'true';
const skip = missing ? `${missing}: skipping the browser tests` : false;

/** A loopback port that was free a moment ago (for a listener whose origin must be known first). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Serves what the internal listener serves, from another port: the same page, a foreign origin. */
function startForeignSite(internal) {
  const server = http.createServer(async (req, res) => {
    try {
      const r = await fetch(`http://${internal}${req.url}`, { signal: AbortSignal.timeout(TIMEOUT_MS) });
      res.writeHead(r.status, { 'Content-Type': r.headers.get('content-type') || 'text/plain' });
      res.end(Buffer.from(await r.arrayBuffer()));
    } catch (err) {
      res.writeHead(502).end(String(err));
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

describe('the demo page in headless Chromium', () => {
  let gw;
  let browser;
  let foreign;
  const pages = []; // { page, log } of every page opened, for the failure report
  const clients = [];

  test('Chromium is installed', { skip: !inCi && skip }, () => {
    assert.ok(!missing, `${missing}; with CI=true the browser tests must run`);
  });

  before(async () => {
    if (missing) return;
    // The allowlist names the internal listener's origin, so its port is chosen first.
    const internalPort = await freePort();
    gw = await new Gateway({
      CORECAST_INTERNAL_LISTEN: `127.0.0.1:${internalPort}`,
      CORECAST_ALLOWED_ORIGINS: `http://127.0.0.1:${internalPort}`,
    }).start();
    browser = await puppeteer.launch({
      executablePath: chromium,
      headless: true,
      // Chromium refuses to run as root with its sandbox (containers, CI).
      args: process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : [],
      timeout: LAUNCH_TIMEOUT_MS,
      protocolTimeout: LAUNCH_TIMEOUT_MS,
    });
  });

  after(async () => {
    for (const c of clients) c.close();
    if (browser) await browser.close();
    if (foreign) await new Promise((resolve) => foreign.close(resolve));
    if (gw) await gw.stop();
  });

  // Prints what the browser and the gateway said, for a test that failed.
  function report(t, gateway = gw) {
    if (t.passed !== false) return;
    for (const { url, log } of pages) console.error(`--- browser log of ${url}\n${log.join('\n')}`);
    if (gateway) console.error(`--- ${gateway.logPath}\n${gateway.logTail(60)}`);
  }

  /** Opens the demo page at `origin` in a fresh browser context (its own storage), closed
   * when test `t` ends. */
  async function openDemo(t, origin) {
    const context = await browser.createBrowserContext();
    t.after(() => context.close());
    const page = await context.newPage();
    const url = `${origin}/demo/`;
    const entry = { url, log: [], errors: [] };
    pages.push(entry);
    page.on('console', (m) => entry.log.push(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (err) => {
      entry.log.push(`pageerror: ${err.message}`);
      entry.errors.push(err.message);
    });
    page.on('requestfailed', (r) => entry.log.push(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
    await page.goto(url, { waitUntil: 'load', timeout: TIMEOUT_MS });
    return { page, errors: entry.errors };
  }

  /** Waits (bounded) until `fn(...args)` is true in the page, re-checking on every DOM change. */
  async function until(page, what, fn, ...args) {
    try {
      await page.waitForFunction(fn, { timeout: TIMEOUT_MS, polling: 'mutation' }, ...args);
    } catch (err) {
      const status = await page.$eval('#status', (e) => e.textContent).catch(() => '?');
      const errors = await page.$eval('#errors', (e) => e.innerText).catch(() => '?');
      throw new Error(`page: ${what} (status line: ${JSON.stringify(status)}; errors: ` +
        `${JSON.stringify(errors)}): ${err.message}`);
    }
  }

  async function logIn(page, token) {
    await page.locator('#token').fill(token);
    await page.click('#login button[type=submit]');
  }

  const text = (page, selector) => page.$eval(selector, (e) => e.textContent);
  const visible = (page, selector) => page.$eval(selector, (e) => e.checkVisibility());

  test('from an allowed origin it connects, upgrades, sends, receives and shows reads and presence', { skip }, async (t) => {
    t.after(() => report(t));
    await gw.putUser(1, 'ann@example.test', 'Ann');
    await gw.putUser(2, 'bob@example.test', 'Bob');
    await gw.putGroup(GROUP, [1, 2], 'Berlin');
    await gw.putGroup(OTHER_GROUP, [2], 'Paris');

    const { page, errors } = await openDemo(t, `http://${gw.internal}`);
    assert.equal(await page.$eval('#url', (e) => e.value), gw.url, 'the gateway filled in its public URL');

    // A bad token: the page says why and offers the login again.
    await logIn(page, 'not-a-token');
    await until(page, 'a connect error about the token', () => {
      const s = document.getElementById('status');
      return s.dataset.state === 'error' && /token/i.test(s.textContent);
    });
    assert.equal(await visible(page, '#login'), true, 'the login is offered again');

    await logIn(page, gw.token(1));
    await until(page, 'connected', () => document.getElementById('status').dataset.state === 'connected');
    assert.match(await text(page, '#status'), /user 1/);
    assert.deepEqual([await visible(page, '#login'), await visible(page, '#chat')], [false, true],
      'the chat in place of the login');
    await until(page, 'the transport upgraded to websocket',
      () => document.getElementById('transport').textContent === 'websocket');
    assert.deepEqual(await page.evaluate(() => window.corecastDemo.transports), ['polling', 'websocket'],
      'default options: polling first, then the upgrade');

    // Presence: Bob comes online after the page.
    const bob = await connect(gw, 2);
    clients.push(bob);
    await until(page, 'user 2 shown online',
      () => document.querySelector('#people li[data-user="2"]')?.dataset.online === 'true');

    // Joining a group the user is in selects it; one the user is not in shows the refusal.
    await page.locator('#join-id').fill(GROUP);
    await page.click('#join button');
    await until(page, `group ${GROUP} open`,
      (g) => document.getElementById('room-title').textContent === `Group ${g}`, GROUP);
    assert.deepEqual(await page.$$eval('#groups button', (bs) => bs.map((b) => b.textContent)), [GROUP]);
    await page.locator('#join-id').fill(OTHER_GROUP);
    await page.click('#join button');
    await until(page, 'the not_member refusal shown', (g) => [...document.querySelectorAll('#errors li')]
      .some((li) => li.textContent.includes(`joinGroup ${g}`) && li.textContent.includes('not_member')), OTHER_GROUP);

    // The page sends; Bob receives.
    await page.locator('#text').fill('hello from the browser');
    await page.click('#send button');
    const fromPage = await bob.waitFor('newMessage', (m) => m && m.text === 'hello from the browser');
    assert.equal(fromPage.groupId, GROUP);
    assert.equal(fromPage.senderId, 1);
    await until(page, 'the sent message shown', (id) =>
      document.querySelector(`#messages li[data-id="${id}"] .text`)?.textContent === 'hello from the browser',
    fromPage.id);
    await until(page, 'the input cleared after the ack', () => document.getElementById('text').value === '');

    // Bob reads it: the page shows the receipt.
    const read = await bob.call('markAsRead', { messageId: fromPage.id, groupId: GROUP });
    assert.equal(read.ok, true, JSON.stringify(read));
    await until(page, 'read by user 2', (id) =>
      document.querySelector(`#messages li[data-id="${id}"] .read-by`)?.textContent === 'read by user 2',
    fromPage.id);

    // Bob sends; the page shows it, and marks it read because it is shown.
    const ack = await bob.call('sendMessage', { groupId: GROUP, text: 'hello from node', attachments: [] });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    await until(page, 'the message from user 2 shown', (id) => {
      const li = document.querySelector(`#messages li[data-id="${id}"]`);
      return li?.querySelector('.text').textContent === 'hello from node' &&
        li.querySelector('.who').textContent === 'user 2';
    }, ack.id);
    const receipt = await bob.waitFor('messageRead', (r) => r && r.messageId === ack.id && r.userId === 1);
    assert.equal(receipt.groupId, GROUP);

    // Bob leaves: the page shows him offline.
    bob.close();
    await until(page, 'user 2 shown offline',
      () => document.querySelector('#people li[data-user="2"]')?.dataset.online === 'false');
    assert.deepEqual(errors, [], 'no script errors on the page');
  });

  // The README's "Try it" sets no allowlist: any origin is allowed, the page's included.
  test('with no allowlist (the default) it connects from the internal origin', { skip }, async (t) => {
    const open = await startGateway();
    t.after(async () => {
      report(t, open);
      await open.stop();
    });
    await open.putUser(1, 'ann@example.test', 'Ann');
    const { page, errors } = await openDemo(t, `http://${open.internal}`);
    await logIn(page, open.token(1));
    await until(page, 'connected', () => document.getElementById('status').dataset.state === 'connected');
    await until(page, 'the transport upgraded to websocket',
      () => document.getElementById('transport').textContent === 'websocket');
    assert.deepEqual(errors, [], 'no script errors on the page');
  });

  test('from an origin outside the allowlist it fails to connect', { skip }, async (t) => {
    t.after(() => report(t));
    await gw.putUser(3, 'cy@example.test', 'Cy');
    foreign = await startForeignSite(gw.internal);
    const origin = `http://127.0.0.1:${foreign.address().port}`;
    const { page, errors } = await openDemo(t, origin);
    assert.equal(await page.$eval('#url', (e) => e.value), gw.url, 'the same page, the same gateway');

    await logIn(page, gw.token(3));
    await until(page, 'a connect error', () => {
      const s = document.getElementById('status');
      return s.dataset.state === 'error' && /connect error/i.test(s.textContent);
    });
    assert.equal(await page.evaluate(() => window.corecastDemo.connects), 0, 'never connected');
    assert.equal(await visible(page, '#chat'), false, 'no chat without a connection');
    assert.deepEqual(errors, [], 'no script errors on the page');
  });
});
