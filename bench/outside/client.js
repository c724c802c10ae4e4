// A load client that is not ours: Bun's own WebSocket client (uWebSockets underneath, as in
// the Bun peer), speaking the subset of protocol v1 that `loadgen` speaks, so that the
// gateway and the peers are also measured by a client whose costs are not the project's.
// bench/run.sh runs it with CLIENT=outside in place of target/release/loadgen: it takes the
// same scenario arguments and writes a report with the same fields (the ones bench/report.py
// reads).
//
//   bun bench/outside/client.js chat --users 2000 --room-size 20 --rate 2 --duration 20 \
//     --channel-prefix bench: --url ws://127.0.0.1:8080/ws --secret <s> --pid <server pid> \
//     --json out.json
//   ... flood --connections 10000 --rate 5000 --hold 5 ...
//   ... broadcast --subscribers 5000 --publishers 1 --rate 200 --duration 10 ...
//
// What it measures, like loadgen: the server's CPU (utime + stime from /proc/<pid>/stat)
// and RSS (/proc/<pid>/status) over the phases, latency from the publisher's send time in the
// payload to arrival, and an audit of every channel's offsets per connection (gaps,
// duplicates, reorders). Connects are paced at --rate (flood) or 2,000/s.

import { createHmac } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";

const DRAIN_MS = 3000;
const CONNECT_TIMEOUT_MS = 15000;

function parseArgs(argv) {
  const [scenario, ...rest] = argv;
  const opts = { scenario, url: [] };
  for (let i = 0; i < rest.length; i++) {
    const key = rest[i];
    if (!key.startsWith("--")) throw new Error(`unexpected argument ${key}`);
    const name = key.slice(2);
    if (name === "no-progress") continue;
    const value = rest[++i];
    if (value === undefined) throw new Error(`${key} needs a value`);
    if (name === "url") opts.url.push(value);
    else opts[name.replace(/-/g, "_")] = value;
  }
  if (opts.protocol && opts.protocol !== "v1") {
    throw new Error(`--protocol ${opts.protocol}: this client speaks v1 only`);
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const num = (name, dflt) => (opts[name] === undefined ? dflt : Number(opts[name]));
if (!opts.secret) throw new Error("--secret is required");
if (opts.url.length === 0) opts.url.push("ws://127.0.0.1:8080/ws");

/** An HS256 JWT for `user` granting the `bench:` channels, as loadgen mints. */
function mint(user) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const exp = Math.floor(Date.now() / 1000) + 86400;
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: user, exp, channels: ["bench:*"] })}`;
  return `${body}.${createHmac("sha256", opts.secret).update(body).digest("base64url")}`;
}

const TICKS = 100; // USER_HZ: /proc/<pid>/stat counts in 1/100 s on Linux
function serverCpuSecs() {
  if (!opts.pid) return null;
  const stat = readFileSync(`/proc/${opts.pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS;
}
function serverRssKib() {
  if (!opts.pid) return null;
  const m = readFileSync(`/proc/${opts.pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/);
  return m ? Number(m[1]) : null;
}

const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const stats = {
  sent: 0,
  expected: 0,
  received: 0,
  gaps: 0,
  duplicates: 0,
  reorders: 0,
  errors: {},
  latencies: [],
  handshakes: [],
};
const error = (what) => (stats.errors[what] = (stats.errors[what] || 0) + 1);

/** The fields of a v1 `message` push the audit and the latency need: `channel` (names hold
 * no quote or escape), `offset`, and `data.t` (the payload's only `"t":` key). */
function lightMessage(text) {
  const c = text.indexOf('"channel":"') + 11;
  const channel = text.slice(c, text.indexOf('"', c));
  const o = text.indexOf('"offset":') + 9;
  const offset = parseInt(text.slice(o, o + 20), 10);
  const t = text.indexOf('"t":');
  const data = t < 0 ? null : { t: parseInt(text.slice(t + 4, t + 24), 10) };
  return { op: "message", channel, offset, data };
}

/** One client: connects, answers replies by id, audits the offsets of its channel. */
class Client {
  constructor(index, user) {
    this.index = index;
    this.user = user;
    this.nextId = 0;
    this.pending = new Map();
    this.last = new Map(); // channel -> last offset seen
    this.counting = false;
  }

  open() {
    const base = opts.url[this.index % opts.url.length];
    const sep = base.includes("?") ? "&" : "?";
    const started = performance.now();
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${base}${sep}token=${mint(this.user)}&user=${this.user}`);
      this.ws = ws;
      const timer = setTimeout(() => reject(new Error("connect_timeout")), CONNECT_TIMEOUT_MS);
      ws.onmessage = (event) => {
        const frame = JSON.parse(event.data);
        if (frame.op === "welcome") {
          clearTimeout(timer);
          stats.handshakes.push(performance.now() - started);
          ws.onmessage = (e) => this.onFrame(e.data);
          resolve();
        }
      };
      ws.onerror = () => {
        clearTimeout(timer);
        reject(new Error("connect_error"));
      };
      ws.onclose = (event) => {
        clearTimeout(timer);
        if (this.closing) return;
        error(`close_${event.code}`);
        reject(new Error(`close_${event.code}`));
      };
    });
  }

  onFrame(text) {
    // A message push is read without parsing it whole, as loadgen reads it: the client must
    // not be what limits the measure (JSON.parse of every push held it near 400,000/s).
    const frame = text.startsWith('{"op":"message"') ? lightMessage(text) : JSON.parse(text);
    if (frame.op === "message") {
      const last = this.last.get(frame.channel);
      if (last !== undefined) {
        if (frame.offset === last + 1) {
          // in order
        } else if (frame.offset <= last) {
          stats.duplicates += frame.offset === last ? 1 : 0;
          stats.reorders += frame.offset < last ? 1 : 0;
        } else {
          stats.gaps += frame.offset - last - 1;
        }
      }
      if (last === undefined || frame.offset > last) this.last.set(frame.channel, frame.offset);
      if (this.counting) {
        stats.received += 1;
        if (frame.data && typeof frame.data.t === "number") stats.latencies.push(nowUs() - frame.data.t);
      }
      return;
    }
    if (frame.id !== undefined) {
      const waiter = this.pending.get(frame.id);
      if (waiter) {
        this.pending.delete(frame.id);
        waiter(frame);
      } else if (frame.error) {
        error(`error_${frame.error.code}`);
      }
    }
  }

  request(op, fields) {
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      this.pending.set(id, (frame) => (frame.error ? reject(new Error(frame.error.code)) : resolve(frame.ok)));
      this.ws.send(JSON.stringify({ id, op, ...fields }));
    });
  }

  async subscribe(channel) {
    const ok = await this.request("subscribe", { channel });
    this.last.set(channel, ok.offset || 0);
  }

  publish(channel, padding) {
    const id = ++this.nextId;
    this.ws.send(JSON.stringify({ id, op: "publish", channel, data: { t: nowUs(), p: padding } }));
    stats.sent += 1;
  }

  close() {
    this.closing = true;
    try {
      this.ws.close();
    } catch {
      // already closed
    }
  }
}

/** Opens `n` clients paced at `rate`/s; `users(i)` names each. */
async function connectAll(n, rate, user) {
  const clients = [];
  const started = performance.now();
  const opening = [];
  for (let i = 0; i < n; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 1) await sleep(wait);
    const c = new Client(i, user(i));
    clients.push(c);
    opening.push(
      c.open().catch((e) => {
        error(`connect_${e.message}`);
        c.failed = true;
      }),
    );
  }
  await Promise.all(opening);
  const secs = (performance.now() - started) / 1000;
  return { clients: clients.filter((c) => !c.failed), rate: n / secs };
}

function percentiles(values) {
  const sorted = Float64Array.from(values).sort();
  const at = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0);
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), p999: at(0.999), max: sorted.length ? sorted[sorted.length - 1] : 0 };
}

const toMs = (p) => Object.fromEntries(Object.entries(p).map(([k, v]) => [k, v / 1000]));

/** Publishes from each `publisher` every 1/rate s for `secs`, counting `recipients` each. */
async function publishPhase(clients, publishers, rate, recipients, secs, padding) {
  for (const c of clients) c.counting = true;
  const cpu0 = serverCpuSecs();
  const started = performance.now();
  const end = started + secs * 1000;
  const timers = publishers.map(({ client, channel }) => {
    const interval = 1000 / rate;
    let next = started + Math.random() * interval;
    const tick = () => {
      const now = performance.now();
      while (next <= now && next < end) {
        client.publish(channel, padding);
        stats.expected += recipients;
        next += interval;
      }
      if (next < end) setTimeout(tick, Math.max(0, next - performance.now()));
    };
    return setTimeout(tick, next - started);
  });
  await sleep(secs * 1000);
  // Drain: until everything expected arrived, or DRAIN_MS.
  const drainEnd = performance.now() + DRAIN_MS;
  while (stats.received < stats.expected && performance.now() < drainEnd) await sleep(20);
  for (const t of timers) clearTimeout(t);
  const cpu = cpu0 === null ? null : serverCpuSecs() - cpu0;
  return { cpu, secs: (performance.now() - started) / 1000 };
}

async function main() {
  const rss0 = serverRssKib();
  const cpuStart = serverCpuSecs();
  const report = { scenario: opts.scenario, client: "outside (Bun WebSocket)", workers: 1 };
  let connected;
  let phase = null;
  if (opts.scenario === "flood") {
    const n = num("connections", 10000);
    connected = await connectAll(n, num("rate", 5000), (i) => `lo-u${i}`);
    connected.cpu = cpuStart === null ? null : serverCpuSecs() - cpuStart;
    await sleep(num("hold", 5) * 1000);
  } else if (opts.scenario === "chat") {
    const users = num("users", 2000);
    const size = num("room_size", 20);
    const prefix = opts.channel_prefix || "bench:";
    connected = await connectAll(users, 2000, (i) => `lo-u${i}`);
    const room = (c) => `${prefix}lo-room-${Math.floor(c.index / size)}`;
    await Promise.all(connected.clients.map((c) => c.subscribe(room(c)).catch(() => error("subscribe_failed"))));
    const publishers = connected.clients.map((c) => ({ client: c, channel: room(c) }));
    phase = await publishPhase(connected.clients, publishers, num("rate", 2), size, num("duration", 20), "x".repeat(num("payload", 64)));
  } else if (opts.scenario === "broadcast") {
    const subs = num("subscribers", 5000);
    const pubs = num("publishers", 1);
    const channel = opts.channel || "bench:lo-broadcast";
    connected = await connectAll(subs + pubs, 2000, (i) => `lo-u${i}`);
    const subscribers = connected.clients.slice(0, subs);
    await Promise.all(subscribers.map((c) => c.subscribe(channel).catch(() => error("subscribe_failed"))));
    const publishers = connected.clients.slice(subs).map((client) => ({ client, channel }));
    phase = await publishPhase(subscribers, publishers, num("rate", 200), subscribers.length, num("duration", 10), "x".repeat(num("payload", 64)));
  } else {
    throw new Error(`scenario ${opts.scenario}: this client runs flood, chat and broadcast`);
  }
  const clients = connected.clients;
  const rss1 = serverRssKib();
  report.connections = clients.length;
  report.connect_rate = connected.rate;
  report.handshake_ms = percentiles(stats.handshakes);
  report.server_rss_kib_before = rss0;
  report.server_rss_kib_after = rss1;
  report.rss_per_connection_kib = rss0 === null ? null : (rss1 - rss0) / Math.max(1, clients.length);
  if (phase) {
    report.latency_ms = toMs(percentiles(stats.latencies));
    report.sent = stats.sent;
    report.expected = stats.expected;
    report.received = stats.received;
    report.lost = Math.max(0, stats.expected - stats.received);
    report.deliveries_per_sec = stats.received / phase.secs;
    report.server_cpu_secs = phase.cpu;
    report.server_cpu_us_per_delivery = phase.cpu === null ? null : (phase.cpu * 1e6) / Math.max(1, stats.received);
    report.duration_secs = phase.secs;
  } else {
    const cpu = connected.cpu;
    report.server_cpu_secs = cpu;
    report.server_cpu_us_per_connect = cpu === null ? null : (cpu * 1e6) / Math.max(1, clients.length);
  }
  report.gaps = stats.gaps;
  report.duplicates = stats.duplicates;
  report.reorders = stats.reorders;
  report.errors = stats.errors;
  for (const c of clients) c.close();
  const text = JSON.stringify(report, null, 1);
  if (opts.json) writeFileSync(opts.json, text);
  console.log(text);
  const clean = report.gaps === 0 && report.duplicates === 0 && report.reorders === 0 && !report.lost && Object.keys(report.errors).length === 0;
  process.exit(clean ? 0 : 1);
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
