// What the app's backend in the loop costs (docs/proxies.md, docs/webhooks.md), measured
// against a release gateway and the test backend (tests/backend/backend.mjs, Node's `http`):
//
// 1. A connect through the connect proxy against a connect with a JWT: the same v1 handshakes,
//    CONNECTS of them CONCURRENCY at a time, JWT, proxy, JWT again (the spread of the two JWT
//    rounds is the noise). Reported: connects/s, latency p50/p99 (upgrade request to `welcome`),
//    and the gateway's CPU per connect (from /proc; the backend's own CPU is the app's).
// 2. Webhook throughput: clients subscribe to and leave fresh channels of a `webhooks`
//    namespace (four events per channel: occupied, member added, member removed, vacated) until
//    EVENTS events were made; reported: events/s from the first subscribe until the backend
//    took the last one (live: the rate the events are made at, as long as the sender keeps
//    up); then the same with the backend down while they are made (a backlog in the feed),
//    timed from the first batch after it came back to the last (the sender's own rate, batches
//    of 100, each signed and checked).
//
//   cargo build --release -p gateway && node bench/backend-cost.mjs
//   REDIS=1 node bench/backend-cost.mjs      # the gateway on a private redis-server
//
// Environment: CONNECTS (default 4000), CONCURRENCY (20), EVENTS (20000), GATEWAY_BIN
// (target/release/gateway). Needs `npm ci` in bench/peers (for `ws`).

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..');
const WebSocket = createRequire(path.join(here, 'peers/package.json'))('ws');
const GATEWAY_BIN = process.env.GATEWAY_BIN || path.join(repo, 'target/release/gateway');
const CONNECTS = Number(process.env.CONNECTS || 4000);
const CONCURRENCY = Number(process.env.CONCURRENCY || 20);
const EVENTS = Number(process.env.EVENTS || 20000);
const SECRET = randomBytes(32).toString('hex');
const HOOK_SECRET = randomBytes(16).toString('hex');
const API_KEY = randomBytes(16).toString('hex');
const procs = [];

function token(sub) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startRedis() {
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  procs.push(proc);
  await new Promise((r) => setTimeout(r, 300));
  return `redis://127.0.0.1:${port}`;
}

function startBackend() {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [path.join(repo, 'tests/backend/backend.mjs')], { stdio: ['pipe', 'pipe', 'inherit'] });
    procs.push(proc);
    createInterface({ input: proc.stdout }).once('line', (line) => {
      const [, proxy, control] = line.split(' ');
      resolve({ proc, proxy: `127.0.0.1:${proxy}`, control: `127.0.0.1:${control}` });
    });
  });
}

function startGateway(args) {
  return new Promise((resolve, reject) => {
    const proc = spawn(GATEWAY_BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    procs.push(proc);
    proc.on('error', reject);
    createInterface({ input: proc.stderr }).on('line', (line) => {
      try {
        const e = JSON.parse(line);
        if (e?.fields?.message === 'listening') resolve({ proc, addr: e.fields.addr });
      } catch { /* not JSON */ }
    });
  });
}

/** The process's CPU time so far, in microseconds (utime + stime; 100 ticks a second). */
function cpuMicros(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10_000;
}

/** One v1 connect: resolves with the time to `welcome`, then closes. */
function connectOnce(addr, how) {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const url = how.token ? `ws://${addr}/ws?token=${how.token}` : `ws://${addr}/ws`;
    const ws = new WebSocket(url, how.cookie ? { headers: { Cookie: how.cookie } } : {});
    ws.once('message', () => {
      const took = Number(process.hrtime.bigint() - started) / 1e6;
      ws.close();
      resolve(took);
    });
    ws.once('error', reject);
    ws.once('unexpected-response', (_, res) => reject(new Error(`HTTP ${res.statusCode}`)));
  });
}

async function connectRound(gw, label, how) {
  const latencies = [];
  let next = 0;
  const cpu0 = cpuMicros(gw.proc.pid);
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < CONNECTS) {
      const i = next++;
      latencies.push(await connectOnce(gw.addr, how(i)));
    }
  }));
  const secs = (performance.now() - t0) / 1000;
  const cpu = cpuMicros(gw.proc.pid) - cpu0;
  latencies.sort((a, b) => a - b);
  const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))].toFixed(2);
  const row = { label, connects_per_s: Math.round(CONNECTS / secs), p50_ms: q(0.5), p99_ms: q(0.99), cpu_us_per_connect: Math.round(cpu / CONNECTS) };
  console.log(JSON.stringify(row));
  return row;
}

async function webhookRound(gw, backend, backlog) {
  const control = (p, method = 'GET') => fetch(`http://${backend.control}${p}`, { method }).then((r) => r.json());
  const base = (await control('/webhooks/count')).events;
  if (backlog) await control('/down', 'POST');
  const cycles = Math.ceil(EVENTS / 4);
  const clients = await Promise.all(Array.from({ length: 20 }, (_, i) => new Promise((resolve) => {
    const ws = new WebSocket(`ws://${gw.addr}/ws?token=${token(`w${i}`)}`);
    let id = 0;
    const waiting = new Map();
    ws.on('message', (m) => {
      const f = JSON.parse(m);
      if (f.id && waiting.has(f.id)) { waiting.get(f.id)(); waiting.delete(f.id); }
    });
    ws.once('message', () => resolve({
      ws,
      request: (op, fields) => new Promise((done) => { id += 1; waiting.set(id, done); ws.send(JSON.stringify({ id, op, ...fields })); }),
    }));
  })));
  const t0 = performance.now();
  let made = 0;
  await Promise.all(clients.map(async (c, i) => {
    for (let n = i; n < cycles; n += clients.length) {
      await c.request('subscribe', { channel: `hook:${n}` });
      await c.request('unsubscribe', { channel: `hook:${n}` });
      made += 4;
    }
  }));
  const madeSecs = (performance.now() - t0) / 1000;
  let from = t0;
  if (backlog) {
    await control('/up', 'POST');
    for (;;) {
      const c = await control('/webhooks/count');
      if (c.events > base) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    from = performance.now();
  }
  let count = { events: 0 };
  while (count.events < base + made) {
    count = await control('/webhooks/count');
    if (count.events < base + made) await new Promise((r) => setTimeout(r, 20));
  }
  const secs = (performance.now() - from) / 1000;
  const row = { label: backlog ? 'webhooks-backlog' : 'webhooks-live', events: made, made_in_s: madeSecs.toFixed(2), delivered_in_s: secs.toFixed(2), events_per_s: Math.round(made / secs), batches: count.batches, all_signed: count.all_verified };
  console.log(JSON.stringify(row));
  for (const c of clients) c.ws.close();
  return row;
}

try {
  const backend = await startBackend();
  await fetch(`http://${backend.control}/state`, { method: 'POST', body: JSON.stringify({ webhook_secret: HOOK_SECRET }) });
  const dir = mkdtempSync(path.join(tmpdir(), 'backend-cost-'));
  const config = path.join(dir, 'gateway.toml');
  writeFileSync(config, '[[namespaces]]\nprefix = "hook:"\nopen = true\nwebhooks = true\n');
  const args = ['--listen', '127.0.0.1:0', '--log-format', 'json', '--log', 'warn,gateway=info', '--jwt-secret', SECRET, '--api-key', API_KEY,
    '--database-url', 'off', '--config', config, '--max-connections-per-user', '100000',
    '--subscribe-rate', '100000', '--subscribe-burst', '100000',
    '--proxy-connect-url', `http://${backend.proxy}/connect`,
    '--webhook-url', `http://${backend.proxy}/webhook`, '--webhook-secret', HOOK_SECRET];
  if (process.env.REDIS) args.push('--redis-url', await startRedis());
  const gw = await startGateway(args);
  console.log(JSON.stringify({ gateway: GATEWAY_BIN, redis: Boolean(process.env.REDIS), connects: CONNECTS, concurrency: CONCURRENCY }));
  // The same 50 users either way (a user's personal channel is joined on connect).
  const jwts = Array.from({ length: 50 }, (_, i) => token(`u${i}`));
  await connectRound(gw, 'warm-up', (i) => ({ token: jwts[i % 50] }));
  await connectRound(gw, 'jwt', (i) => ({ token: jwts[i % 50] }));
  await connectRound(gw, 'connect-proxy', (i) => ({ cookie: `session=u${i % 50}` }));
  await connectRound(gw, 'jwt-again', (i) => ({ token: jwts[i % 50] }));
  await webhookRound(gw, backend, false);
  await webhookRound(gw, backend, true);
} finally {
  for (const p of procs) p.kill('SIGKILL');
}
