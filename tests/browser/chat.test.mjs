// End-to-end test of the web demo (web-demo/) in headless Chromium.
//
// Run from the repository root after `cargo build -p gateway` and `npm ci --prefix tests/browser`:
//   node --test tests/browser/
// Environment: GATEWAY_BIN (default <repo>/target/debug/gateway), CHROMIUM_BIN (default
// /usr/bin/chromium). Screenshots go to <repo>/tests/artifacts/.
//
// The steps share one gateway, one browser and the users' pages, and run in order; after a
// failing step the later ones are skipped (and a screenshot of every page is saved).

import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { API_KEY, ARTIFACTS, launchBrowser, scenario, startGateway, stopGateway } from './harness.mjs';

const WAIT = 20_000; // generous: the machine may be busy
const STEP_TIMEOUT = 90_000;

let gateway; // {proc, addr, base, log}
let browser;
const pages = {}; // name -> {context, page, errors, sockets, sent, received, routeRequests}

async function api(pathname, body, base = gateway.base) {
  const res = await fetch(`${base}${pathname}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  assert.equal(res.status, 200, `${pathname}: ${JSON.stringify(json)}`);
  return json;
}

// ---------------------------------------------------------------------------------------------
// Browser helpers

async function openUser(name, { viewport = { width: 1200, height: 760 }, query = '', base = gateway.base } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const user = { context, page, errors: [], sockets: [], sent: [], received: [], routeRequests: 0 };
  page.on('console', (msg) => {
    if (msg.type() === 'error') user.errors.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', (err) => user.errors.push(`pageerror: ${err.message}`));
  page.on('request', (req) => {
    if (new URL(req.url()).pathname === '/v1/route') user.routeRequests++;
  });
  page.on('websocket', (ws) => {
    user.sockets.push(ws);
    const index = user.sockets.length - 1;
    ws.on('framesent', (frame) => user.sent.push({ socket: index, payload: String(frame.payload) }));
    ws.on('framereceived', (frame) => {
      try {
        const parsed = JSON.parse(String(frame.payload));
        // Which socket it came on, kept off the frame's own fields.
        Object.defineProperty(parsed, '__socket', { value: index, enumerable: false });
        user.received.push(parsed);
      } catch {
        /* not ours to judge here */
      }
    });
  });
  pages[name] = user;
  await page.goto(`${base}/${query}`);
  await page.getByTestId('login-name').fill(name);
  await page.getByTestId('login-name').press('Enter');
  await waitForState(page, 'live');
  return user;
}

/** Polls a condition of the test process's own state (frames seen) until it holds. */
async function until(condition, timeout, describe) {
  const deadline = Date.now() + timeout;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`timed out after ${timeout} ms: ${describe()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const status = (page) => page.getByTestId('connection-status');

function waitForState(page, state, timeout = WAIT) {
  return page.locator(`[data-testid="connection-status"][data-state="${state}"]`).waitFor({ timeout });
}

/** Types a message in the composer, sends it with Enter, and waits for its "sent" state. */
async function send(page, text) {
  const input = page.getByTestId('composer-input');
  await input.fill(text);
  await input.press('Enter');
  await page
    .locator('[data-testid="message"][data-own="true"][data-state="sent"]')
    .filter({ has: page.getByTestId('message-text').getByText(text, { exact: true }) })
    .waitFor();
}

/** Waits until the message pane shows exactly these texts, in this order. */
async function waitForTexts(page, expected, timeout = WAIT) {
  try {
    await page.waitForFunction(
      (want) => {
        const got = [...document.querySelectorAll('[data-testid="message-list"] [data-testid="message-text"]')]
          .map((n) => n.textContent);
        return got.length === want.length && got.every((t, i) => t === want[i]);
      },
      expected,
      { timeout },
    );
  } catch (err) {
    const got = await texts(page);
    assert.deepEqual(got, expected, `message pane never showed the expected messages (${err.message})`);
  }
}

const texts = (page) => page.getByTestId('message-list').getByTestId('message-text').allTextContents();

async function screenshot(page, file) {
  await page.screenshot({ path: path.join(ARTIFACTS, file) });
}

/** A step of the scenario: skipped after an earlier failure, screenshots on failure. */
const step = scenario({
  timeout: STEP_TIMEOUT,
  onFailure: async (err) => {
    for (const [who, { page }] of Object.entries(pages)) {
      await screenshot(page, `failure-${who.toLowerCase()}.png`).catch(() => {});
    }
    const errors = Object.entries(pages).flatMap(([who, u]) => u.errors.map((e) => `${who}: ${e}`));
    if (errors.length) err.message += `\nconsole errors so far:\n${errors.join('\n')}`;
    err.message += `\nlast gateway log lines:\n${gateway.log.slice(-15).join('\n')}`;
  },
});

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  gateway = await startGateway();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await stopGateway(gateway);
});

// ---------------------------------------------------------------------------------------------
// The scenario

const history = []; // the lobby's messages, in order

step('alice and bob log in, connect through /v1/route and see each other in the lobby', async () => {
  const alice = await openUser('Alice');
  const bob = await openUser('Bob');
  for (const user of [alice, bob]) {
    const { page } = user;
    assert.equal(await page.getByTestId('conversation-title').textContent(), '#lobby');
    assert.ok(user.routeRequests >= 1, 'the page asked /v1/route where to connect');
    assert.match(user.sockets[0].url(), new RegExp(`^ws://${gateway.addr}/ws\\?token=`));
    await page.getByTestId('member-list').getByTestId('member-alice').waitFor();
    await page.getByTestId('member-list').getByTestId('member-bob').waitFor();
    assert.equal(await status(page).textContent().then((s) => s.trim()), 'Live');
  }
  assert.match(await alice.page.getByTestId('member-alice').textContent(), /Alice.*\(you\)/);
  // After logging in, the keyboard focus is in the message box.
  assert.equal(await alice.page.evaluate(() => document.activeElement?.dataset.testid), 'composer-input');
  assert.match(await bob.page.getByTestId('member-alice').textContent(), /Alice/);
});

step('they chat in the room: author, time, own messages marked, pending then sent', async () => {
  const alice = pages.Alice.page;
  const bob = pages.Bob.page;
  // Record the states alice's own messages go through.
  await alice.evaluate(() => {
    window.__states = [];
    const list = document.querySelector('[data-testid="message-list"]');
    const record = (node) => {
      if (node.dataset?.testid === 'message' && node.dataset.own === 'true') {
        window.__states.push(`${node.querySelector('[data-testid="message-text"]').textContent}:${node.dataset.state}`);
      }
    };
    new MutationObserver((records) => {
      for (const r of records) {
        if (r.type === 'attributes') {
          if (r.oldValue !== r.target.dataset.state) record(r.target); // changes only
        } else r.addedNodes.forEach(record);
      }
    }).observe(list, { childList: true, subtree: true, attributes: true, attributeOldValue: true, attributeFilter: ['data-state'] });
  });

  await send(alice, 'Hello Bob — ça va ?');
  history.push('Hello Bob — ça va ?');
  await waitForTexts(bob, history);
  await send(bob, 'Hi Alice!\nHow are you?');
  history.push('Hi Alice!\nHow are you?');
  await send(alice, 'Great, thanks.');
  history.push('Great, thanks.');
  await waitForTexts(alice, history);
  await waitForTexts(bob, history);

  const states = await alice.evaluate(() => window.__states);
  const hello = states.filter((s) => s.startsWith('Hello Bob'));
  assert.deepEqual(hello, ['Hello Bob — ça va ?:pending', 'Hello Bob — ça va ?:sent'], 'pending, then sent on the ack');

  // Own messages are marked on the sender's page only; authors and times are shown.
  const first = (page) => page.getByTestId('message').first();
  assert.equal(await first(alice).getAttribute('data-own'), 'true');
  assert.equal(await first(bob).getAttribute('data-own'), 'false');
  assert.equal(await first(bob).getByTestId('message-author').textContent(), 'Alice');
  assert.equal(await first(alice).getByTestId('message-author').textContent(), 'You');
  const time = first(bob).getByTestId('message-time');
  assert.match(await time.textContent(), /\d/);
  assert.ok(Date.parse(await time.getAttribute('datetime')) > Date.now() - 600_000);
  assert.ok(await first(alice).evaluate((n) => n.classList.contains('own')));

  await screenshot(alice, 'chat-alice.png');
  await screenshot(bob, 'chat-bob.png');
});

step('message text is shown as text, never as HTML', async () => {
  const alice = pages.Alice.page;
  const bob = pages.Bob.page;
  const evil = '<img src=x onerror="window.__xss=1"><b>bold?</b>';
  await send(alice, evil);
  history.push(evil);
  await waitForTexts(bob, history);
  for (const page of [alice, bob]) {
    assert.equal(await page.getByTestId('message-list').locator('img, b').count(), 0);
    assert.equal(await page.getByTestId('message-text').last().textContent(), evil);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
  }
});

step('presence: leaving the room updates the members panel; joining again loads history', async () => {
  const alice = pages.Alice.page;
  const bob = pages.Bob.page;
  await bob.getByTestId('leave-room').click();
  await bob.getByTestId('room-lobby').waitFor({ state: 'detached' });
  await alice.getByTestId('member-list').getByTestId('member-bob').waitFor({ state: 'detached' });
  await alice.getByTestId('member-list').getByTestId('member-alice').waitFor();
  assert.match(await alice.getByTestId('conversation-sub').textContent(), /1 online/);

  // Join again through the form (keyboard: type and press Enter): the last messages load.
  await bob.getByTestId('room-input').fill('lobby');
  await bob.getByTestId('room-input').press('Enter');
  await bob.getByTestId('room-lobby').waitFor();
  await alice.getByTestId('member-list').getByTestId('member-bob').waitFor();
  await waitForTexts(bob, history);
  assert.equal(await bob.getByTestId('conversation-title').textContent(), '#lobby');

  // Creating a room is joining a new name: it starts empty.
  await alice.getByTestId('room-input').fill('design-review');
  await alice.getByTestId('join-room').click();
  await alice.getByTestId('room-design-review').waitFor();
  assert.equal(await alice.getByTestId('conversation-title').textContent(), '#design-review');
  await alice.getByTestId('empty-state').waitFor();
  await send(alice, 'First!');
  await alice.getByTestId('room-lobby').click();
  await waitForTexts(alice, history);
});

step('a direct message arrives with an unread badge', async () => {
  const alice = pages.Alice.page;
  const bob = pages.Bob.page;
  await bob.getByTestId('member-list').getByTestId('member-alice').getByRole('button', { name: 'Message Alice' }).click();
  assert.equal(await bob.getByTestId('conversation-title').textContent(), '@Alice');
  await send(bob, 'psst, a direct message');
  await waitForTexts(bob, ['psst, a direct message']); // the sender sees its own DM

  const dm = alice.getByTestId('dm-list').getByTestId('dm-bob');
  await dm.getByTestId('unread-badge').filter({ hasText: /^1$/ }).waitFor();
  await waitForTexts(alice, history); // still in the lobby: nothing leaked into the room
  await screenshot(alice, 'dm-badge.png');

  await dm.click();
  assert.equal(await alice.getByTestId('conversation-title').textContent(), '@Bob');
  await waitForTexts(alice, ['psst, a direct message']);
  await dm.getByTestId('unread-badge').waitFor({ state: 'detached' });
  assert.equal(await alice.getByTestId('message').first().getByTestId('message-author').textContent(), 'Bob');
  await send(alice, 'got it');
  await waitForTexts(bob, ['psst, a direct message', 'got it']);

  await alice.getByTestId('room-lobby').click();
  await bob.getByTestId('room-lobby').click();
  await waitForTexts(alice, history);
  await waitForTexts(bob, history);
});

step('after the connection is cut, the page reconnects and shows what it missed, in order, once', async () => {
  const aliceUser = pages.Alice;
  const alice = aliceUser.page;
  const bob = pages.Bob.page;
  const socketsBefore = aliceUser.sockets.length;

  // Record what the status shows.
  await alice.evaluate(() => {
    window.__status = [];
    const node = document.getElementById('status-text');
    new MutationObserver(() => window.__status.push(node.textContent))
      .observe(node, { childList: true, characterData: true, subtree: true });
  });
  // Hold alice's next route lookup until bob has published, so that the messages are surely
  // published while she is away (the page itself is not told anything).
  let routeHeld;
  const held = new Promise((resolve) => { routeHeld = resolve; });
  let release;
  const gate = new Promise((resolve) => { release = resolve; });
  // (`times: 1`: only the next lookup is held; the route is removed after it.)
  await alice.route((url) => url.pathname === '/v1/route', async (route) => {
    routeHeld();
    await gate;
    await route.continue();
  }, { times: 1 });

  const cut = await api('/api/disconnect', { user: 'alice', reconnect: true });
  assert.equal(cut.disconnected, 1);
  await held; // alice is trying to come back
  assert.notEqual(await status(alice).getAttribute('data-state'), 'live');
  await bob.getByTestId('member-list').getByTestId('member-alice').waitFor({ state: 'detached' });

  const missed = ['missed 1', 'missed 2', 'missed 3'];
  await send(bob, missed[0]);
  await send(bob, missed[1]);
  await bob.getByTestId('dm-alice').click();
  await send(bob, 'a DM while you were away');
  await bob.getByTestId('room-lobby').click();
  await send(bob, missed[2]);
  history.push(...missed);

  // Alice writes meanwhile: her message waits, marked as pending, and goes out once she is back.
  const offlineText = 'written while away';
  await alice.getByTestId('composer-input').fill(offlineText);
  await alice.getByTestId('composer-input').press('Enter');
  const pending = alice.locator('[data-testid="message"][data-own="true"]')
    .filter({ has: alice.getByTestId('message-text').getByText(offlineText, { exact: true }) });
  assert.equal(await pending.getAttribute('data-state'), 'pending');

  assert.notEqual(await status(alice).getAttribute('data-state'), 'live', 'alice was away the whole time');
  assert.ok(!(await texts(alice)).includes('missed 1'));
  await alice.getByTestId('connection-banner').getByText(/Connection lost/).waitFor();
  await screenshot(alice, 'reconnecting.png');
  release();
  history.push(offlineText);

  await waitForState(alice, 'live');
  await waitForTexts(alice, history);
  await pending.and(alice.locator('[data-state="sent"]')).waitFor();
  await waitForTexts(bob, history);
  await bob.getByTestId('member-list').getByTestId('member-alice').waitFor();
  // The missed direct message came back through the personal channel's re-sync.
  await alice.getByTestId('dm-bob').getByTestId('unread-badge').filter({ hasText: /^1$/ }).waitFor();

  // A message after the reconnect comes after the recovered ones, and nothing came twice.
  await send(bob, 'welcome back');
  history.push('welcome back');
  await waitForTexts(alice, history);
  assert.deepEqual(await texts(alice), history);
  // On the wire, not only on the page (client.js drops repeats by offset): the new socket
  // carried each message once.
  const wire = aliceUser.received
    .filter((f) => f.__socket >= socketsBefore && f.op === 'message')
    .map((f) => `${f.channel}#${f.epoch}/${f.offset}`);
  assert.ok(wire.length >= 5, `messages on the new socket: ${wire.join(' ')}`);
  assert.deepEqual(wire, [...new Set(wire)], 'no message came twice on the wire');

  // It showed the countdown, and re-subscribed with since/epoch, the personal channel too.
  const shown = await alice.evaluate(() => window.__status);
  assert.ok(shown.some((s) => /^Reconnecting in \d+ s$/.test(s)), `status showed: ${shown.join(' | ')}`);
  assert.equal(shown.at(-1), 'Live');
  assert.ok(aliceUser.sockets.length > socketsBefore, 'a new WebSocket was opened');
  const resubscribes = aliceUser.sent
    .filter((f) => f.socket >= socketsBefore)
    .map((f) => JSON.parse(f.payload))
    .filter((f) => f.op === 'subscribe');
  for (const channel of ['room:lobby', 'user:alice']) {
    const sub = resubscribes.find((f) => f.channel === channel);
    assert.ok(sub, `re-subscribed ${channel}`);
    assert.equal(typeof sub.since, 'number', `${channel} with since`);
    assert.equal(typeof sub.epoch, 'string', `${channel} with epoch`);
  }
  await screenshot(alice, 'reconnected.png');

  await alice.getByTestId('dm-bob').click();
  await waitForTexts(alice, ['psst, a direct message', 'got it', 'a DM while you were away']);
  await alice.getByTestId('room-lobby').click();
});

step('a disconnect with reconnect:false leaves the page offline, saying why', async () => {
  const bobUser = pages.Bob;
  const bob = bobUser.page;
  const socketsBefore = bobUser.sockets.length;
  await api('/api/disconnect', { user: 'bob', reconnect: false });
  await waitForState(bob, 'offline');
  assert.match(await status(bob).textContent(), /Offline/);
  assert.match(await bob.getByTestId('connection-banner').textContent(), /offline: disconnected by the server/);
  await bob.getByTestId('retry-now').filter({ hasText: 'Reconnect' }).waitFor();
  await screenshot(bob, 'offline.png');
  // Proving that nothing happens takes a wait: longer than the first reconnect delay (≤ 1 s).
  await bob.waitForTimeout(3_000);
  assert.equal(await status(bob).getAttribute('data-state'), 'offline');
  assert.equal(bobUser.sockets.length, socketsBefore, 'no reconnect attempt');
  // The user may reconnect by hand.
  await bob.getByTestId('retry-now').click();
  await waitForState(bob, 'live');
  await send(bob, 'back by hand');
  history.push('back by hand');
  await waitForTexts(pages.Alice.page, history);
});

step('at phone width the page fits, and the sidebar is a drawer', async () => {
  const carol = await openUser('Carol', { viewport: { width: 390, height: 844 } });
  const { page } = carol;
  await waitForTexts(page, history);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no horizontal scrolling (${overflow}px too wide)`);
  assert.ok(await page.getByTestId('composer-input').isVisible());
  assert.ok(await page.getByTestId('send-button').isVisible());
  // The drawer is closed and out of the focus order until opened.
  assert.equal(await page.getByTestId('sidebar-toggle').getAttribute('aria-expanded'), 'false');
  assert.equal(await page.locator('#sidebar').evaluate((n) => n.inert), true);
  await screenshot(page, 'phone-width.png');

  await page.getByTestId('sidebar-toggle').click();
  assert.equal(await page.getByTestId('sidebar-toggle').getAttribute('aria-expanded'), 'true');
  await page.getByTestId('member-list').getByTestId('member-alice').waitFor();
  await page.getByTestId('room-lobby').waitFor({ state: 'visible' });
  await page.waitForFunction(() => {
    const r = document.getElementById('sidebar').getBoundingClientRect();
    return r.left >= 0 && r.right <= window.innerWidth;
  });
  await screenshot(page, 'phone-drawer.png');
  await page.keyboard.press('Escape');
  assert.equal(await page.getByTestId('sidebar-toggle').getAttribute('aria-expanded'), 'false');
  await page.waitForFunction(() => document.getElementById('sidebar').getBoundingClientRect().right <= 0);
  assert.equal(await page.evaluate(() => document.activeElement?.dataset.testid), 'sidebar-toggle');
  await send(page, 'hi from my phone');
  history.push('hi from my phone');
  await waitForTexts(pages.Alice.page, history);

  // The longest status still fits.
  await api('/api/disconnect', { user: 'carol', reconnect: false });
  await waitForState(page, 'offline');
  await page.getByTestId('connection-banner').getByText(/disconnected by the server/).waitFor();
  await page.getByTestId('retry-now').waitFor();
  const wider = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(wider <= 0, `no horizontal scrolling when offline (${wider}px too wide)`);
  await screenshot(page, 'phone-offline.png');
});

step('the token is refreshed before it expires, on the same connection', async () => {
  // Tokens of 5 s: refreshed 1 s (20%) before exp. Without refreshes the server would close
  // the connection 5 s (leeway) after the first token's exp, i.e. before the third refresh.
  const dave = await openUser('Dave', { query: '?ttl=5' });
  const refreshIds = () => dave.sent
    .map((f) => JSON.parse(f.payload))
    .filter((f) => f.op === 'refresh' && typeof f.token === 'string')
    .map((f) => f.id);
  const acked = () => refreshIds().filter((id) => dave.received.some((r) => r.id === id && r.ok?.exp > 0));
  await until(() => acked().length >= 3, 40_000, () => `refreshes sent ${refreshIds().length}, acknowledged ${acked().length}`);
  assert.equal(dave.sockets.length, 1, 'one connection throughout');
  assert.equal(dave.sockets[0].isClosed(), false);
  assert.equal(await status(dave.page).getAttribute('data-state'), 'live');
});

step('when the server no longer holds what was missed (recovered: false), the page reloads from history', async () => {
  // A node of its own that keeps only the last 5 messages per channel, and no archive (which
  // would recover the rest).
  const small = await startGateway(['--history-size', '5', '--database-url', 'off']);
  try {
    const erin = await openUser('Erin', { base: small.base });
    const { page } = erin;
    const publish = (text) => api('/api/publish', { channel: 'room:lobby', data: { text } }, small.base);
    await publish('before 1');
    await publish('before 2');
    await waitForTexts(page, ['before 1', 'before 2']);

    let routeHeld;
    const held = new Promise((resolve) => { routeHeld = resolve; });
    let release;
    const gate = new Promise((resolve) => { release = resolve; });
    await page.route((url) => url.pathname === '/v1/route', async (route) => {
      routeHeld();
      await gate;
      await route.continue();
    }, { times: 1 });
    const socketsBefore = erin.sockets.length;
    assert.equal((await api('/api/disconnect', { user: 'erin', reconnect: true }, small.base)).disconnected, 1);
    await held;
    const during = Array.from({ length: 8 }, (_, i) => `during ${i + 1}`);
    for (const text of during) await publish(text); // 3 more than the node keeps
    release();

    await waitForState(page, 'live');
    // The 5 the node still holds, after the ones seen before, each once; a note marks the gap.
    await waitForTexts(page, ['before 1', 'before 2', ...during.slice(3)]);
    const note = page.getByTestId('message-list').getByTestId('gap-note');
    await note.waitFor();
    const order = await page.getByTestId('message-list').evaluate((list) =>
      [...list.children].map((n) => n.dataset.testid === 'gap-note' ? 'gap' : n.textContent.includes('during 4') ? 'd4' : ''));
    assert.equal(order.indexOf('gap') + 1, order.indexOf('d4'), 'the note stands right before the first reloaded message');

    // The client re-subscribed with since/epoch and was told recovered: false.
    const sub = erin.sent
      .filter((f) => f.socket >= socketsBefore)
      .map((f) => JSON.parse(f.payload))
      .find((f) => f.op === 'subscribe' && f.channel === 'room:lobby');
    assert.equal(sub?.since, 2);
    const reply = erin.received.find((r) => r.id === sub.id);
    assert.equal(reply?.ok?.recovered, false);
    await screenshot(page, 'recovered-false.png');
    await erin.context.close();
  } finally {
    await stopGateway(small);
  }
});

step('no console errors on any page', async () => {
  const errors = Object.entries(pages).flatMap(([who, u]) => u.errors.map((e) => `${who}: ${e}`));
  assert.deepEqual(errors, []);
});
