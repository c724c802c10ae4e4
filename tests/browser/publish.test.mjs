// client.js in headless Chromium, on a gateway node on a private redis-server: a publish that
// fails says whether the message may still be published (`GatewayError.maybePublished`).
// Redis frozen: the gateway got the message and could not answer (true), and the message
// appears once Redis thaws. Redis gone: nothing was sent (false).
//
// Run from the repository root after `cargo build -p gateway` and `npm ci --prefix tests/browser`:
//   node --test tests/browser/publish.test.mjs

import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { launchBrowser, scenario, startGateway, startRedis, stopGateway } from './harness.mjs';

const STEP_TIMEOUT = 90_000;
const SECRET = randomBytes(32).toString('hex');
const CHANNEL = 'room:outcome';

let redis;
let gw;
let browser;
let page;
const errors = [];

/** Waits until `check()` is true, asking every 100 ms; throws naming `what` after `within` ms. */
async function eventually(what, within, check) {
  const deadline = Date.now() + within;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${within} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Whether process `pid` is stopped (state T in /proc/<pid>/stat). */
function stopped(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).startsWith('T');
}

/**
 * Publishes `data` with client.js: `publish()` (retrying with one idempotency key until
 * `timeout` ms) or, with `once`, one `publish` request. Resolves with {offset} or
 * {code, maybePublished}.
 */
function publish(data, timeout, once = false) {
  return page.evaluate(async ({ channel, data, timeout, once }) => {
    try {
      const ok = once
        ? await window.client.request('publish', { channel, data })
        : await window.client.publish(channel, data, { timeout });
      return { offset: ok.offset };
    } catch (e) {
      return { code: e.code, maybePublished: e.maybePublished };
    }
  }, { channel: CHANNEL, data, timeout, once });
}

const step = scenario({
  timeout: STEP_TIMEOUT,
  onFailure: async (err) => {
    if (errors.length) err.message += `\nconsole errors:\n${errors.join('\n')}`;
    if (gw) err.message += `\n${gw.addr}:\n${gw.log.slice(-10).join('\n')}`;
  },
});

before(async () => {
  redis = await startRedis();
  gw = await startGateway(['--redis-url', redis.url, '--jwt-secret', SECRET]);
  browser = await launchBrowser();
  page = await browser.newPage();
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  await page.goto(`${gw.base}/`);
  await page.evaluate(async () => {
    const { GatewayClient } = await import('/assets/client.js');
    window.client = new GatewayClient({
      url: '/ws',
      getToken: async () => {
        const r = await fetch('/dev/token', { method: 'POST', body: JSON.stringify({ user: 'pat' }) });
        return r.json();
      },
    });
    await window.client.connect();
  });
});

after(async () => {
  await browser?.close();
  await stopGateway(gw);
  if (redis) {
    redis.proc.kill('SIGCONT');
    redis.proc.kill('SIGKILL');
  }
});

step('a publish goes through while Redis answers', async () => {
  const r = await publish('before', 10_000);
  assert.equal(r.offset, 1, JSON.stringify(r));
});

step('Redis frozen: the error says the message may still be published, and it is', async () => {
  redis.proc.kill('SIGSTOP');
  await eventually('redis-server stopped', 10_000, async () => stopped(redis.proc.pid));
  // One request: the gateway's own answer, not a timeout of the client's.
  const r = await publish('frozen', 0, true);
  assert.deepEqual(r, { code: 'unavailable', maybePublished: true });
  redis.proc.kill('SIGCONT');
  await eventually('the frozen publish appears in history', 20_000, async () => {
    const page_ = await page.evaluate(
      (channel) => window.client.history(channel, { limit: 10 }).catch(() => null),
      CHANNEL,
    );
    return page_?.messages?.some((m) => m.data === 'frozen') ?? false;
  });
});

step('Redis gone: the error says nothing was published', async () => {
  redis.proc.kill('SIGKILL');
  // Publishes sent before the node noticed may say `true`; once it has, each says `false`.
  let last;
  await eventually('a publish refused before anything was sent', 20_000, async () => {
    last = await publish('gone', 1_500);
    assert.equal(last.code, 'timeout', JSON.stringify(last));
    return last.maybePublished === false;
  });
});
