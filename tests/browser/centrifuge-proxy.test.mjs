// The app's backend in the loop, as real clients see it: centrifuge-js (npm `centrifuge`, in
// Node with `ws`) signed in by its session cookie with no token at all, calling `rpc`, refused
// a subscribe and a publish by the backend and seeing another publish rewritten; the v1
// `client.js` calling `rpc` from Chromium; the admin page showing the rpc proxy's breaker open
// while the backend is slow, and closed once it recovers; the webhooks (signed, checked by the
// backend) retrying while the backend is down and delivered once it is back. The backend is
// tests/backend/backend.mjs, a real HTTP server in its own process.
//
// Run from the repository root after `cargo build -p gateway` and `npm ci --prefix tests/browser`:
//   node --test tests/browser/centrifuge-proxy.test.mjs

import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';
import {
  API_KEY, ARTIFACTS, eventually, launchBrowser, newPage, scenario, startGateway, stopGateway,
} from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const WAIT = 20_000;
const WEBHOOK_SECRET = 'a-webhook-secret-for-the-browser-test';
let backend; // {proc, proxy, control}
let gw;
let browser;
let admin;
const clients = [];

const step = scenario({
  timeout: 90_000,
  onFailure: async (err) => {
    if (admin) await admin.page.screenshot({ path: path.join(ARTIFACTS, 'failure-proxy-admin.png') }).catch(() => {});
    if (gw) err.message += `\n${gw.log.slice(-15).join('\n')}`;
  },
});

/** Starts tests/backend/backend.mjs; resolves with its ports. */
function startBackend() {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [path.join(here, '../backend/backend.mjs')],
      { stdio: ['pipe', 'pipe', 'inherit'] });
    proc.on('error', reject);
    createInterface({ input: proc.stdout }).once('line', (line) => {
      const [word, proxy, control] = line.split(' ');
      if (word !== 'backend') reject(new Error(line));
      resolve({ proc, proxy: `127.0.0.1:${proxy}`, control: `127.0.0.1:${control}` });
    });
  });
}

/** Calls the backend's control port. */
async function control(pathname, body) {
  const res = await fetch(`http://${backend.control}${pathname}`, {
    method: body === undefined ? 'GET' : 'POST',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.equal(res.status, 200);
  return res.json();
}

/** The `ws` WebSocket with the app's session cookie, as a browser would send it. */
const withCookie = (cookie) => class extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { headers: { Cookie: cookie } });
  }
};

/** A centrifuge-js client with no token, signed in by `cookie`. */
function client(cookie) {
  const c = new Centrifuge(`ws://${gw.addr}/connection/websocket`, {
    websocket: withCookie(cookie),
    minReconnectDelay: 100,
    maxReconnectDelay: 500,
  });
  clients.push(c);
  return c;
}

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  backend = await startBackend();
  const dir = mkdtempSync(path.join(tmpdir(), 'proxy-test-'));
  const config = path.join(dir, 'gateway.toml');
  writeFileSync(config, '[[namespaces]]\nprefix = "team:"\nproxy_subscribe = true\n\n'
    + '[[namespaces]]\nprefix = "chat:"\nopen = true\nclient_publish = true\nproxy_publish = true\n\n'
    + '[[namespaces]]\nprefix = "hook:"\nopen = true\nwebhooks = true\n');
  const url = (p) => `http://${backend.proxy}/${p}`;
  gw = await startGateway(['--config', config,
    '--proxy-connect-url', url('connect'), '--proxy-subscribe-url', url('subscribe'),
    '--proxy-publish-url', url('publish'), '--proxy-rpc-url', url('rpc'),
    '--proxy-timeout-ms', '1000', '--proxy-breaker-failures', '2', '--proxy-breaker-open-ms', '1500',
    '--webhook-url', url('webhook'), '--webhook-secret', WEBHOOK_SECRET]);
  await control('/state', { webhook_secret: WEBHOOK_SECRET });
  browser = await launchBrowser();
});

after(async () => {
  for (const c of clients) c.disconnect();
  await browser?.close().catch(() => {});
  await stopGateway(gw);
  backend?.proc.kill();
  assert.ok(!gw?.log.some((l) => l.includes('panicked')), 'the gateway panicked');
});

step('centrifuge-js connects by cookie alone and calls the backend', async () => {
  const alice = client('session=alice');
  const connected = new Promise((resolve) => alice.once('connected', resolve));
  alice.connect();
  const ctx = await connected;
  assert.ok(ctx.client, 'a client id');
  const echo = await alice.rpc('echo', { n: 1 });
  assert.deepEqual(echo.data, { echo: { n: 1 }, user: 'alice' });
  const whoami = await alice.rpc('whoami', {});
  assert.deepEqual(whoami.data, { user: 'alice', meta: { session: 'alice', plan: 'pro' } });
  await assert.rejects(alice.rpc('nope', {}), (err) => err.code === 4404 && err.message === 'no method nope');
  const asked = (await control('/requests')).filter((r) => r.path === '/connect');
  assert.equal(asked[0].headers.cookie, 'session=alice');
  assert.equal(asked[0].body.name, 'js');
});

step('the backend refuses a connection: the SDK stays away with its code', async () => {
  const banned = client('session=banned');
  const disconnected = new Promise((resolve) => banned.once('disconnected', resolve));
  banned.connect();
  const ctx = await disconnected;
  assert.equal(ctx.code, 4403);
  assert.equal(ctx.reason, 'banned user');
});

step('subscribes and publishes are the backend\'s to decide', async () => {
  const [alice] = clients;
  await control('/state', { deny: ['team:secret'] });
  const team = alice.newSubscription('team:a');
  const subscribed = new Promise((resolve) => team.once('subscribed', resolve));
  team.subscribe();
  await subscribed;
  const secret = alice.newSubscription('team:secret');
  const refused = new Promise((resolve) => secret.once('unsubscribed', resolve));
  secret.subscribe();
  const ctx = await refused;
  assert.equal(ctx.code, 103);

  const bob = client('session=bob');
  bob.connect();
  const room = bob.newSubscription('chat:x');
  const got = [];
  room.on('publication', (p) => got.push(p.data));
  const ready = new Promise((resolve) => room.once('subscribed', resolve));
  room.subscribe();
  await ready;
  await assert.rejects(alice.publish('chat:x', { text: 'buy spam' }), (err) => err.code === 4000);
  await alice.publish('chat:x', { text: 'hello', shout: true });
  await alice.publish('chat:x', { text: 'plain' });
  await eventually('both publications arrive', () => got.length >= 2, WAIT);
  assert.deepEqual(got, [{ text: 'HELLO', shout: true, moderated: true }, { text: 'plain' }]);
});

step('the v1 client.js calls rpc from a page', async () => {
  const { page, errors } = await newPage(browser, { timeout: WAIT });
  await page.goto(`http://${gw.addr}/`);
  const result = await page.evaluate(async () => {
    const { GatewayClient } = await import('/assets/client.js');
    const res = await fetch('/dev/token', { method: 'POST', body: JSON.stringify({ user: 'carol' }) });
    const { token } = await res.json();
    const c = new GatewayClient({ url: '/ws', getToken: async () => token });
    await c.connect();
    const echo = await c.rpc('echo', { from: 'page' });
    let refused;
    try {
      await c.rpc('nope');
    } catch (e) {
      refused = { code: e.code, backendCode: e.backendCode, message: e.message };
    }
    c.close();
    return { echo, refused };
  });
  assert.deepEqual(result.echo, { echo: { from: 'page' }, user: 'carol' });
  assert.deepEqual(result.refused, { code: 'rejected', backendCode: 4404, message: 'no method nope' });
  assert.deepEqual(errors, []);
});

step('the admin page shows the breaker open while the backend is slow, then closed', async () => {
  admin = await newPage(browser, { timeout: WAIT, viewport: { width: 1280, height: 900 } });
  const { page } = admin;
  await page.goto(`http://${gw.addr}/admin`);
  await page.getByTestId('api-key').fill(API_KEY);
  await page.getByTestId('sign-in').click();
  await page.locator('[data-testid="breaker-rpc"]', { hasText: 'closed' }).waitFor();
  const [alice] = clients;
  await control('/mode', { mode: 'slow', delay_ms: 3000 });
  for (let i = 0; i < 2; i++) {
    await assert.rejects(alice.rpc('echo', {}), (err) => err.code === 100 && err.message === 'backend timeout');
  }
  await page.locator('[data-testid="breaker-rpc"]', { hasText: 'open' }).waitFor();
  await page.screenshot({ path: path.join(ARTIFACTS, 'admin-proxies.png'), fullPage: true });
  await control('/mode', { mode: 'normal' });
  // Asked again every 200 ms: refused at once while the breaker is open, then the probe.
  const deadline = Date.now() + WAIT;
  while (!(await alice.rpc('echo', {}).then(() => true, () => false))) {
    assert.ok(Date.now() < deadline, 'the backend serves again once it recovered');
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  await page.locator('[data-testid="breaker-rpc"]', { hasText: 'closed' }).waitFor();
  // (The browser's own favicon request is a 404 in the console: not the page's error.)
  assert.deepEqual(admin.errors.filter((e) => e.startsWith('pageerror')), []);
});

step('the admin page shows the webhooks retrying while the backend is down, then delivered', async () => {
  const { page } = admin;
  const [alice] = clients;
  const sub = alice.newSubscription('hook:x');
  const subscribed = new Promise((resolve) => sub.once('subscribed', resolve));
  sub.subscribe();
  await subscribed;
  // The first two events arrive while the backend is up.
  const deadline = Date.now() + WAIT;
  while ((await control('/webhooks/count')).events < 2) {
    assert.ok(Date.now() < deadline, 'the first webhook events arrive');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await control('/down', {});
  sub.unsubscribe();
  await page.locator('[data-testid="breaker-webhook"]', { hasText: 'retrying' }).waitFor();
  await page.screenshot({ path: path.join(ARTIFACTS, 'admin-webhook-retrying.png'), fullPage: true });
  await control('/up', {});
  await page.locator('[data-testid="breaker-webhook"]', { hasText: 'ok' }).waitFor();
  const batches = await control('/webhooks');
  assert.ok(batches.every((b) => b.verified), 'every batch is signed with the secret');
  const events = batches.flatMap((b) => b.body.events).map((e) => `${e.name} ${e.channel} ${e.user_id ?? ''}`.trim());
  assert.deepEqual(events, [
    'channel_occupied hook:x', 'member_added hook:x alice', 'member_removed hook:x alice', 'channel_vacated hook:x',
  ]);
});
