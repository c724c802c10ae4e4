// End-to-end test of the admin page (/admin) in headless Chromium, on two gateway nodes that
// share a private redis-server: sign in with the API key, see both nodes, find a channel,
// publish to it and see the message arrive in the demo page of another browser context,
// disconnect that user. Screenshots go to tests/artifacts/admin-*.png.
//
// Run from the repository root after `cargo build -p gateway` and `npm ci --prefix tests/browser`:
//   node --test tests/browser/admin.test.mjs

import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { API_KEY, ARTIFACTS, launchBrowser, newPage, scenario, startGateway, startRedis, stopGateway } from './harness.mjs';

const WAIT = 20_000;
const STEP_TIMEOUT = 90_000;
const SECRET = randomBytes(32).toString('hex');

let redis;
const nodes = []; // node-a, node-b
let browser;
let admin; // {page, errors}
let dora; // {page, errors}

async function open(url) {
  const opened = await newPage(browser, { timeout: WAIT, viewport: { width: 1280, height: 900 } });
  await opened.page.goto(url);
  return opened;
}

const shot = (who, file) => who.page.screenshot({ path: path.join(ARTIFACTS, file), fullPage: true });

const step = scenario({
  timeout: STEP_TIMEOUT,
  onFailure: async (err) => {
    if (admin) await shot(admin, 'failure-admin.png').catch(() => {});
    if (dora) await shot(dora, 'failure-admin-dora.png').catch(() => {});
    const errors = [...(admin?.errors ?? []), ...(dora?.errors ?? [])];
    if (errors.length) err.message += `\nconsole errors:\n${errors.join('\n')}`;
    for (const node of nodes) err.message += `\n${node.addr}:\n${node.log.slice(-10).join('\n')}`;
  },
});

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  redis = await startRedis();
  for (const id of ['node-a', 'node-b']) {
    nodes.push(await startGateway(['--redis-url', redis.url, '--jwt-secret', SECRET, '--node-id', id,
      '--presence-heartbeat-secs', '1']));
  }
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  for (const node of nodes) await stopGateway(node);
  await stopGateway(redis ? { proc: redis.proc } : null);
  for (const node of nodes) {
    assert.ok(!node.log.some((l) => l.includes('panicked')), `${node.addr} panicked`);
  }
});

step('a user chats in the demo page', async () => {
  dora = await open(`${nodes[0].base}/`);
  await dora.page.getByTestId('login-name').fill('Dora');
  await dora.page.getByTestId('login-name').press('Enter');
  await dora.page.locator('[data-testid="connection-status"][data-state="live"]').waitFor();
});

step('the admin page refuses a wrong key, then signs in and shows both nodes', async () => {
  admin = await open(`${nodes[1].base}/admin`);
  const { page } = admin;
  await page.getByTestId('api-key').fill('not-the-key');
  await page.getByTestId('sign-in').click();
  await page.getByTestId('login-error').getByText('not this cluster').waitFor();
  assert.ok(await page.getByTestId('dashboard').isHidden());
  await page.getByTestId('api-key').fill(API_KEY);
  await page.getByTestId('sign-in').click();
  await page.getByTestId('dashboard').waitFor();
  await page.locator('[data-testid="node-row"][data-node="node-a"]').waitFor();
  await page.locator('[data-testid="node-row"][data-node="node-b"]').waitFor();
  assert.equal(await page.getByTestId('node-row').count(), 2);
  assert.equal(await page.getByTestId('total-nodes').textContent(), '2');
  await page.waitForFunction(() => Number(document.querySelector('[data-testid="total-connections"]').textContent) >= 1);
  // The key is in the page's memory only.
  const kept = await page.evaluate(() => [
    location.href, JSON.stringify({ ...localStorage }), JSON.stringify({ ...sessionStorage }), document.cookie,
    document.querySelector('[data-testid="api-key"]').value,
  ].join('\n'));
  assert.ok(!kept.includes(API_KEY), `the API key was kept: ${kept}`);
});

step('channels list the lobby with its member; a channel shows presence and history', async () => {
  const { page } = admin;
  const lobby = page.locator('[data-testid="channel-row"][data-channel="room:lobby"]');
  await lobby.waitFor();
  assert.equal(await lobby.getByTestId('channel-subscribers').textContent(), '1');
  await page.getByTestId('channel-filter').fill('no-such-channel');
  await lobby.waitFor({ state: 'detached' });
  await page.getByTestId('channel-filter').fill('lobby');
  await lobby.waitFor();
  await lobby.getByTestId('channel-link').click();
  await page.getByTestId('channel-detail').waitFor();
  assert.equal(await page.getByTestId('detail-name').textContent(), 'room:lobby');
  await page.getByTestId('detail-member').getByText('dora (Dora)').waitFor();
  assert.match(await page.getByTestId('detail-stats').textContent(), /1 user, 1 connection/);
  assert.equal(await page.getByTestId('publish-channel').inputValue(), 'room:lobby');
});

step('the admin publishes; the demo page in another browser context shows it', async () => {
  const { page } = admin;
  const text = 'hello from the admin page';
  await page.getByTestId('publish-data').fill(JSON.stringify({ text }));
  await page.getByTestId('publish-send').click();
  await page.getByTestId('publish-result').getByText(/Published to room:lobby at offset \d+/).waitFor();
  await dora.page.getByTestId('message-list').getByTestId('message-text').getByText(text, { exact: true }).waitFor();
  await page.getByTestId('detail-message').getByText(text).waitFor();
  // Two polls later the chart has lines.
  await page.waitForFunction(
    () => (document.querySelector('[data-testid="chart-conn"]')?.getAttribute('points') ?? '').split(' ').length >= 2,
    null,
    { timeout: WAIT },
  );
  // A publish the API refuses says why.
  await page.getByTestId('publish-channel').fill('bad channel!');
  await page.getByTestId('publish-send').click();
  await page.getByTestId('publish-result').getByText(/Not published: channel must be/).waitFor();
  await page.getByTestId('publish-channel').fill('room:lobby');
  await shot(admin, 'admin-dashboard.png');
  await shot(dora, 'admin-demo-received.png');
});

step('the admin disconnects the user; her page goes offline', async () => {
  const { page } = admin;
  await page.getByTestId('disconnect-user').fill('dora');
  await page.getByTestId('disconnect-send').click();
  await page.getByTestId('disconnect-result').getByText('Disconnected 1 connection of dora.').waitFor();
  await dora.page.locator('[data-testid="connection-status"][data-state="offline"]').waitFor();
  await shot(admin, 'admin-disconnected.png');
  // No script error. (The browser logs every refused request, the wrong key's 401 and the bad
  // channel's 400 included, and the favicon's 404: the page's own messages were checked.)
  assert.deepEqual(admin.errors.filter((e) => !e.includes('Failed to load resource')), []);
});
