// centrifuge-js (its browser bundle from npm `centrifuge`) in a page of headless Chromium, and
// the demo page (v1, `client.js`) in another browser context, in one room of one node: each
// sees the other's messages, and the demo's member list shows the Centrifugo user; then the
// same with the WebSocket upgrade refused, over HTTP-streaming and over SSE.
//
// Run from the repository root after `cargo build -p gateway` and `npm ci --prefix tests/browser`:
//   node --test tests/browser/centrifuge-page.test.mjs

import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { launchBrowser, newPage, scenario, startGateway, stopGateway } from './harness.mjs';

const WAIT = 20_000;
const here = path.dirname(fileURLToPath(import.meta.url));
const BUNDLE = path.join(here, 'node_modules/centrifuge/dist/centrifuge.js');

let gw;
let browser;
let demo; // the v1 demo page, signed in as Ann
let sdk; // a page running centrifuge-js as cora

const step = scenario({
  timeout: 60_000,
  onFailure: async (err) => {
    const errors = [...(demo?.errors ?? []), ...(sdk?.errors ?? [])];
    if (errors.length) err.message += `\nconsole errors:\n${errors.join('\n')}`;
    if (gw) err.message += `\n${gw.addr}:\n${gw.log.slice(-10).join('\n')}`;
  },
});

before(async () => {
  gw = await startGateway();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await stopGateway(gw);
  assert.ok(!gw?.log.some((l) => l.includes('panicked')), 'the gateway panicked');
  for (const who of [demo, sdk].filter(Boolean)) assert.deepEqual(who.errors, []);
});

step('the demo page signs in to the lobby over v1', async () => {
  demo = await newPage(browser, { timeout: WAIT });
  await demo.page.goto(`${gw.base}/`);
  await demo.page.getByTestId('login-name').fill('Ann');
  await demo.page.getByTestId('login-name').press('Enter');
  await demo.page.locator('[data-testid="connection-status"][data-state="live"]').waitFor();
  await demo.page.getByTestId('member-list').getByTestId('member-ann').waitFor();
});

step('centrifuge-js in another page joins the same room, and the demo lists its user', async () => {
  sdk = await newPage(browser, { timeout: WAIT });
  // A page of the node's origin (the WebSocket's Origin check), with the SDK's bundle. The
  // browser's own favicon request is none of the node's business.
  await sdk.page.route('**/favicon.ico', (route) => route.fulfill({ status: 204 }));
  await sdk.page.goto(`${gw.base}/healthz`);
  await sdk.page.addScriptTag({ path: BUNDLE });
  await sdk.page.evaluate(async () => {
    const res = await fetch('/dev/token', { method: 'POST', body: JSON.stringify({ user: 'cora' }) });
    const { token } = await res.json();
    const client = new window.Centrifuge(`ws://${location.host}/connection/websocket`, { token });
    window.pubs = [];
    const sub = client.newSubscription('room:lobby');
    sub.on('publication', (ctx) => window.pubs.push(ctx));
    window.sub = sub;
    sub.subscribe();
    client.connect();
    await sub.ready(10_000);
  });
  await demo.page.getByTestId('member-list').getByTestId('member-cora').waitFor();
});

step('a message from the demo reaches centrifuge-js, and one from centrifuge-js the demo', async () => {
  const input = demo.page.getByTestId('composer-input');
  await input.fill('hello from v1');
  await input.press('Enter');
  await sdk.page.waitForFunction(() => window.pubs.some((p) => p.data?.text === 'hello from v1'));
  const fromDemo = await sdk.page.evaluate(() => window.pubs.find((p) => p.data?.text === 'hello from v1'));
  assert.equal(fromDemo.info.user, 'ann');
  await sdk.page.evaluate(() => window.sub.publish({ text: 'hello from centrifuge-js' }));
  await demo.page
    .getByTestId('message-list')
    .getByTestId('message-text')
    .getByText('hello from centrifuge-js', { exact: true })
    .waitFor();
  // Both see the same offsets: the SDK's publication carries the next one.
  await sdk.page.waitForFunction(() => window.pubs.length === 2);
  const offsets = await sdk.page.evaluate(() => window.pubs.map((p) => p.offset));
  assert.equal(offsets[1], offsets[0] + 1);
});

// Where WebSockets do not get through (a proxy that refuses the upgrade: here, an endpoint
// that answers 404), centrifuge-js falls back by itself: to HTTP-streaming, and to SSE (the
// browser's own EventSource) when streaming is refused too.
for (const [transport, user, blockStream] of [['http_stream', 'dora', false], ['sse', 'ezra', true]]) {
  step(`with WebSocket blocked, centrifuge-js falls back to ${transport} and chats with the demo`, async () => {
    const page = await newPage(browser, { timeout: WAIT });
    const pages = [page];
    try {
      await page.page.route('**/favicon.ico', (route) => route.fulfill({ status: 204 }));
      await page.page.goto(`${gw.base}/healthz`);
      await page.page.addScriptTag({ path: BUNDLE });
      const used = await page.page.evaluate(async ({ user, blockStream }) => {
        const res = await fetch('/dev/token', { method: 'POST', body: JSON.stringify({ user }) });
        const { token } = await res.json();
        const base = `http://${location.host}`;
        const client = new window.Centrifuge([
          { transport: 'websocket', endpoint: `ws://${location.host}/blocked/websocket` },
          { transport: 'http_stream', endpoint: blockStream ? `${base}/blocked/http_stream` : `${base}/connection/http_stream` },
          { transport: 'sse', endpoint: `${base}/connection/sse` },
        ], { token, emulationEndpoint: `${base}/emulation` });
        window.fallbackPubs = [];
        let transportUsed;
        client.on('connected', (ctx) => { transportUsed = ctx.transport; });
        const sub = client.newSubscription('room:lobby');
        sub.on('publication', (ctx) => window.fallbackPubs.push(ctx));
        window.fallbackSub = sub;
        sub.subscribe();
        client.connect();
        await sub.ready(10_000);
        return transportUsed;
      }, { user, blockStream });
      assert.equal(used, transport);
      await demo.page.getByTestId('member-list').getByTestId(`member-${user}`).waitFor();
      const text = `hello over ${transport}`;
      const input = demo.page.getByTestId('composer-input');
      await input.fill(text);
      await input.press('Enter');
      await page.page.waitForFunction((t) => window.fallbackPubs.some((p) => p.data?.text === t), text);
      const reply = `${transport} answers`;
      await page.page.evaluate((t) => window.fallbackSub.publish({ text: t }), reply);
      await demo.page
        .getByTestId('message-list')
        .getByTestId('message-text')
        .getByText(reply, { exact: true })
        .waitFor();
      // The only errors are the blocked endpoints' (the refused upgrade; the streaming
      // fetch's 404, whose console line names no URL).
      assert.deepEqual(page.errors.filter((e) => !e.includes('/blocked/') && !e.includes('404 (Not Found)')), []);
    } finally {
      for (const p of pages) await p.context.close().catch(() => {});
    }
  });
}

step('a page of another allowed origin falls back to HTTP-streaming across origins (CORS)', async () => {
  // The page's origin: another node (any server would do); the gateway allows it.
  // One secret for both: the page gets its token from its own origin.
  const secret = randomBytes(32).toString('hex');
  const origin = await startGateway(['--jwt-secret', secret]);
  const target = await startGateway(['--jwt-secret', secret, '--allowed-origins', `http://${origin.addr}`]);
  const page = await newPage(browser, { timeout: WAIT });
  try {
    // No `page.route` here: with request interception on, Playwright answers CORS
    // preflights itself, and the node's own answers would go untested.
    await page.page.goto(`${origin.base}/healthz`);
    await page.page.addScriptTag({ path: BUNDLE });
    const result = await page.page.evaluate(async (host) => {
      const res = await fetch('/dev/token', { method: 'POST', body: JSON.stringify({ user: 'finn' }) });
      const { token } = await res.json();
      const client = new window.Centrifuge([
        { transport: 'websocket', endpoint: `ws://${host}/blocked/websocket` },
        { transport: 'http_stream', endpoint: `http://${host}/connection/http_stream` },
      ], { token, emulationEndpoint: `http://${host}/emulation` });
      let transportUsed;
      let connects = 0;
      client.on('connected', (ctx) => { transportUsed = ctx.transport; connects += 1; });
      const sub = client.newSubscription('room:cors');
      const got = new Promise((resolve) => sub.on('publication', (ctx) => resolve(ctx.data)));
      sub.subscribe();
      client.connect();
      await sub.ready(10_000);
      // A command by a cross-origin POST (preflighted: JSON body).
      await sub.publish({ text: 'across origins' });
      const data = await got;
      // A refused POST would have closed the transport (and the client connected again).
      const state = client.state;
      client.disconnect();
      return { transportUsed, data, connects, state };
    }, target.addr);
    assert.deepEqual(result, {
      transportUsed: 'http_stream', data: { text: 'across origins' }, connects: 1, state: 'connected',
    });
    // Only the refused upgrade, and the browser's favicon request (a 404 whose console
    // line names no URL).
    const unexpected = page.errors.filter((e) => !e.includes('/blocked/') && !e.includes('404 (Not Found)'));
    assert.deepEqual(unexpected, []);
  } finally {
    await page.context.close().catch(() => {});
    await stopGateway(target);
    await stopGateway(origin);
  }
});
