// An app's backend for the proxy tests: a real HTTP server (Node's `http`, no packages) that
// answers the gateway's connect, refresh, subscribe, publish, sub_refresh and rpc proxy
// requests the way an app written for Centrifugo's proxies would, and that the test can make
// slow, failing, down, hostile (10 MB answers, answers that never end, redirects), or change
// its mind.
//
// Two ports: the proxy port (what the gateway calls) and a control port (what the test
// calls), so that the proxy port can really go down (closed: connection refused) and come back
// on the same port while the test still talks to the backend.
//
//   node tests/backend/backend.mjs      prints "backend <proxy port> <control port>"
//
// Control (JSON bodies):
//   POST /mode      {"mode": "normal"|"slow"|"fail"|"huge"|"hang"|"redirect", "delay_ms": n}
//   POST /down      closes the proxy port, and every connection open on it
//   POST /up        listens on it again
//   POST /state     merges into the app state: {"deny": [channels], "connect_ttl": s,
//                   "sub_ttl": s, "refresh_expired": bool}
//   GET  /requests  every request the proxy port got: [{path, headers, body}]
//   POST /clear     forgets them
//   GET  /webhooks  every webhook batch taken: [{key, verified, body}] (`verified`: its
//                   X-Pusher-Signature is the HMAC-SHA256 of the body with `webhook_secret`,
//                   set through /state)
//   GET  /webhooks/count  {batches, events, all_verified}
//
// The app: the `session` cookie names the user ("banned" is refused with error 4403, and no
// cookie with 101); subscribes are allowed unless the channel is in `deny` (103); a
// publication whose `text` contains "spam" is refused (4000), one with `"shout": true` is
// published upper-cased; rpc `echo` returns its data with the caller, `whoami` the user and
// meta, `b64` `{"b":1}` as `b64data`, `flaky` a temporary error 4503, any other method is
// error 4404.

import http from 'node:http';
import { createHmac, timingSafeEqual } from 'node:crypto';

const state = {
  mode: 'normal',
  delay_ms: 0,
  deny: [],
  connect_ttl: 0,
  sub_ttl: 0,
  refresh_expired: false,
  webhook_secret: '',
};
const requests = [];
const webhooks = [];

/** Whether `signature` is the hex HMAC-SHA256 of `body` with the webhook secret. */
function verified(body, signature) {
  const expected = createHmac('sha256', state.webhook_secret).update(body).digest();
  const given = Buffer.from(signature || '', 'hex');
  return given.length === expected.length && timingSafeEqual(given, expected);
}
const sockets = new Set();
let proxyPort = 0;

function readBody(req) {
  return new Promise((resolve) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', () => resolve(''));
  });
}

function json(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(body);
}

function cookie(headers, name) {
  for (const part of (headers.cookie || '').split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return v.join('=');
  }
  return undefined;
}

const now = () => Math.floor(Date.now() / 1000);

/** The app's answer to one proxy request. */
function answer(path, headers, req) {
  switch (path) {
    case '/connect': {
      const user = cookie(headers, 'session');
      if (!user) return { error: { code: 101, message: 'unauthorized' } };
      if (user === 'banned') return { error: { code: 4403, message: 'banned user' } };
      if (user === 'kicked') return { disconnect: { code: 4501, reason: 'go away' } };
      const result = {
        user,
        info: { name: `User ${user}` },
        meta: { session: user, plan: 'pro' },
      };
      if (state.connect_ttl) result.expire_at = now() + state.connect_ttl;
      return { result };
    }
    case '/refresh':
      if (state.refresh_expired) return { result: { expired: true } };
      return { result: { expire_at: now() + (state.connect_ttl || 3600) } };
    case '/subscribe':
      if (state.deny.includes(req.channel)) {
        return { error: { code: 103, message: 'permission denied' } };
      }
      return { result: state.sub_ttl ? { expire_at: now() + state.sub_ttl } : {} };
    case '/sub_refresh':
      if (state.deny.includes(req.channel)) return { result: { expired: true } };
      return { result: { expire_at: now() + (state.sub_ttl || 3600) } };
    case '/publish': {
      const data = req.data;
      if (typeof data?.text === 'string' && data.text.includes('spam')) {
        return { error: { code: 4000, message: 'no spam here' } };
      }
      if (data?.shout) {
        return { result: { data: { ...data, text: String(data.text).toUpperCase(), moderated: true } } };
      }
      return { result: {} };
    }
    case '/rpc':
      if (req.method === 'echo') return { result: { data: { echo: req.data ?? null, user: req.user } } };
      if (req.method === 'whoami') return { result: { data: { user: req.user, meta: req.meta ?? null } } };
      if (req.method === 'b64') {
        return { result: { b64data: Buffer.from(JSON.stringify({ b: 1 })).toString('base64') } };
      }
      if (req.method === 'flaky') return { error: { code: 4503, message: 'try later', temporary: true } };
      return { error: { code: 4404, message: `no method ${req.method}` } };
    default:
      return null;
  }
}

/** A webhook batch: verified, recorded, acknowledged. */
function webhook(req, res, body) {
  let parsed = null;
  try {
    parsed = JSON.parse(body);
  } catch {
    return json(res, 400, { error: 'not JSON' });
  }
  const ok = verified(body, req.headers['x-pusher-signature']);
  webhooks.push({ key: req.headers['x-pusher-key'], verified: ok, body: parsed });
  return json(res, ok ? 200 : 401, {});
}

const proxy = http.createServer(async (req, res) => {
  const body = await readBody(req);
  const path = req.url.split('?')[0];
  let parsed = null;
  try {
    parsed = JSON.parse(body);
  } catch {
    // Recorded as text below.
  }
  requests.push({ path, headers: req.headers, body: parsed ?? body });
  if (state.delay_ms) await new Promise((r) => setTimeout(r, state.delay_ms));
  switch (state.mode) {
    case 'fail':
      return json(res, 500, { error: 'internal' });
    case 'huge': {
      // A valid proxy answer of 10 MB: only its size is wrong.
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"result":{"data":"');
      const chunk = 'x'.repeat(1 << 20);
      for (let i = 0; i < 10; i++) res.write(chunk);
      return res.end('"}}');
    }
    case 'hang':
      // Headers and the start of an answer, then nothing, ever.
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"result":');
      return undefined;
    case 'redirect':
      res.writeHead(302, { location: `http://127.0.0.1:${proxyPort}/elsewhere${path}` });
      return res.end();
    default: {
      if (path === '/webhook') return webhook(req, res, body);
      const a = answer(path, req.headers, parsed ?? {});
      if (!a) return json(res, 404, { error: 'no such endpoint' });
      return json(res, 200, a);
    }
  }
});
proxy.on('connection', (socket) => {
  sockets.add(socket);
  socket.on('close', () => sockets.delete(socket));
});

function listenProxy(port) {
  return new Promise((resolve, reject) => {
    proxy.once('error', reject);
    proxy.listen(port, '127.0.0.1', () => {
      proxy.off('error', reject);
      proxyPort = proxy.address().port;
      resolve();
    });
  });
}

const control = http.createServer(async (req, res) => {
  const body = await readBody(req);
  const value = body ? JSON.parse(body) : {};
  const route = `${req.method} ${req.url}`;
  switch (route) {
    case 'POST /mode':
      state.mode = value.mode ?? 'normal';
      state.delay_ms = value.delay_ms ?? 0;
      return json(res, 200, { ok: true });
    case 'POST /state':
      Object.assign(state, value);
      return json(res, 200, { ok: true });
    case 'POST /down':
      await new Promise((resolve) => {
        proxy.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      return json(res, 200, { ok: true });
    case 'POST /up':
      await listenProxy(proxyPort);
      return json(res, 200, { ok: true });
    case 'GET /requests':
      return json(res, 200, requests);
    case 'GET /webhooks':
      return json(res, 200, webhooks);
    case 'GET /webhooks/count':
      return json(res, 200, {
        batches: webhooks.length,
        events: webhooks.reduce((n, b) => n + (b.body?.events?.length ?? 0), 0),
        all_verified: webhooks.every((b) => b.verified),
      });
    case 'POST /clear':
      requests.length = 0;
      return json(res, 200, { ok: true });
    default:
      return json(res, 404, { error: route });
  }
});

await listenProxy(0);
await new Promise((resolve) => control.listen(0, '127.0.0.1', resolve));
console.log(`backend ${proxyPort} ${control.address().port}`);
// The test's end (its pipe closing) ends the backend.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
