// Smoke test for a peer (or the gateway) with a raw WebSocket client (`ws`), speaking the
// same framing as the load generator.
//
//   node smoke.js v1       ws://127.0.0.1:9001/ws            [secret]
//   node smoke.js socketio 'ws://127.0.0.1:9002/socket.io/?EIO=4&transport=websocket' [secret] [url2]
//
// With url2 the second client connects there (two instances sharing rooms through Redis).
// SMOKE_HOLD_MS=n keeps the first client idle n ms before a last ping (heartbeat check).
//
// Two clients subscribe to one channel; the first publishes twice; both must receive both
// messages in order with offsets n+1, n+2 (the publisher its own too); ping and unsubscribe
// must answer ok; a connection without a token must be refused. Exits non-zero on failure.

const crypto = require("node:crypto");
const WebSocket = require("ws");

const [protocol = "v1", base = "ws://127.0.0.1:9001/ws", secret = "smoke-secret", base2 = base] = process.argv.slice(2);
if (!["v1", "socketio"].includes(protocol)) throw new Error("protocol: v1 | socketio");

function token(sub) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 600 })}`;
  return `${body}.${crypto.createHmac("sha256", secret).update(body).digest("base64url")}`;
}

function url(sub, at = base) {
  const sep = at.includes("?") ? "&" : "?";
  return sub === null ? at : `${at}${sep}token=${token(sub)}`;
}

class Client {
  constructor(sub, at = base) {
    this.sub = sub;
    this.frames = [];
    this.waiters = [];
    this.nextId = 0;
    this.ws = new WebSocket(url(sub, at));
    this.ws.on("message", (data) => this.onMessage(data.toString()));
    this.ws.on("error", (e) => this.push({ op: "_error", error: e.message }));
    this.ws.on("close", (code) => this.push({ op: "_closed", code }));
  }
  onMessage(text) {
    if (protocol === "v1") return this.push(JSON.parse(text));
    if (text.startsWith("42")) {
      const [event, payload] = JSON.parse(text.slice(2));
      if (event !== "msg") throw new Error(`unexpected event ${event}`);
      return this.push(payload);
    }
    if (text === "2") { this.pongs = (this.pongs || 0) + 1; return this.ws.send("3"); } // engine.io ping -> pong
    if (text.startsWith("0")) return this.ws.send("40"); // engine.io open -> socket.io connect
    if (text.startsWith("40")) return; // socket.io connected
    if (text.startsWith("44")) return this.push({ op: "_connect_error", text });
  }
  push(frame) {
    this.frames.push(frame);
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
  // Resolves with (and removes) the first frame that matches, or rejects after 3 s.
  async take(pred, what) {
    const deadline = Date.now() + 3000;
    for (;;) {
      const i = this.frames.findIndex(pred);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.sub}: timed out waiting for ${what}; have ${JSON.stringify(this.frames)}`);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
  }
  send(cmd) {
    this.ws.send(protocol === "v1" ? JSON.stringify(cmd) : `42${JSON.stringify(["cmd", cmd])}`);
  }
  async request(cmd) {
    const id = ++this.nextId;
    this.send({ id, ...cmd });
    const r = await this.take((f) => f.id === id, `reply to ${cmd.op}`);
    if (!r.ok) throw new Error(`${cmd.op} failed: ${JSON.stringify(r)}`);
    return r.ok;
  }
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok  ${what}`);
}

async function main() {
  const channel = `room:smoke${process.pid}`;
  const a = new Client("alice");
  const b = new Client("bob", base2);
  const wa = await a.take((f) => f.op === "welcome", "welcome");
  const wb = await b.take((f) => f.op === "welcome", "welcome");
  check(wa.user === "alice" && wb.user === "bob", `welcome carries the token's sub (node ${wa.node})`);
  const sa = await a.request({ op: "subscribe", channel });
  const sb = await b.request({ op: "subscribe", channel });
  check(Number.isInteger(sa.offset) && typeof sa.epoch === "string" && sa.recovered === false,
    `subscribe ok ${JSON.stringify(sa)}`);
  const base = sb.offset;
  const t0 = Date.now();
  const p1 = await a.request({ op: "publish", channel, data: { n: 1, t: t0 } });
  const p2 = await a.request({ op: "publish", channel, data: { n: 2, t: t0 } });
  check(p1.offset === base + 1 && p2.offset === base + 2, `publish ok offsets ${p1.offset}, ${p2.offset}`);
  for (const c of [a, b]) {
    const m1 = await c.take((f) => f.op === "message" && f.data && f.data.n === 1, "message 1");
    const m2 = await c.take((f) => f.op === "message" && f.data && f.data.n === 2, "message 2");
    check(m1.channel === channel && m1.offset === base + 1 && m2.offset === base + 2 && m1.from === "alice" &&
      m1.epoch === sa.epoch && typeof m1.ts === "number" && m1.data.t === t0,
      `${c.sub} received both messages in order (${Date.now() - t0} ms)`);
  }
  check(JSON.stringify(await a.request({ op: "ping" })) === "{}", "ping ok {}");
  check(JSON.stringify(await b.request({ op: "unsubscribe", channel })) === "{}", "unsubscribe ok {}");
  await a.request({ op: "publish", channel, data: { n: 3 } });
  await a.take((f) => f.op === "message" && f.data && f.data.n === 3, "message 3");
  await new Promise((r) => setTimeout(r, 200));
  check(!b.frames.some((f) => f.op === "message"), "no message after unsubscribe");
  const hold = Number(process.env.SMOKE_HOLD_MS || 0);
  if (hold > 0) {
    await new Promise((r) => setTimeout(r, hold));
    check(JSON.stringify(await a.request({ op: "ping" })) === "{}", `still connected after ${hold} ms idle (${a.pongs || 0} engine.io pings answered)`);
  }
  a.ws.close();
  b.ws.close();

  const anon = new Client(null);
  const refused = await anon.take((f) => f.op === "_error" || f.op === "_closed" || f.op === "_connect_error" || f.op === "welcome", "refusal");
  check(refused.op !== "welcome", `no token refused (${refused.error || refused.text || refused.code})`);
  anon.ws.terminate();
  console.log("smoke test passed");
}

main().then(() => process.exit(0), (e) => { console.error(`FAIL: ${e.message}`); process.exit(1); });
