// Bun peer for the benchmark: the subset of protocol v1 (JSON, `v1.json`) that the load
// generator uses, on Bun.serve's built-in WebSocket pub/sub. See ../README.md.
//
//   PORT (default 9001), HOST (default 127.0.0.1)
//
// Not a reimplementation of the gateway: no JWT signature check (the `sub` claim is read
// from the payload as is), no ACL, no presence, no history, no rate limits, no heartbeats of
// its own. The differences favour the peer.

const PORT = Number(process.env.PORT || 9001);
const HOST = process.env.HOST || "127.0.0.1";
const EPOCH = "bun";

// channel -> last offset assigned (offsets start at 1).
const offsets = new Map();
let sessions = 0;

const { subFromToken } = require("../token.js");

function tokenOf(req, url) {
  const q = url.searchParams.get("token");
  if (q) return q;
  const auth = req.headers.get("authorization");
  return auth && auth.startsWith("Bearer ") ? auth.slice(7) : null;
}

function reply(ws, id, ok) {
  ws.send(JSON.stringify({ id, ok }));
}

function fail(ws, id, code, message) {
  ws.send(JSON.stringify({ id, error: { code, message } }));
}

const server = Bun.serve({
  hostname: HOST,
  port: PORT,
  fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === "/healthz") return new Response("ok\n");
    if (url.pathname !== "/ws") return new Response("not found\n", { status: 404 });
    const user = subFromToken(tokenOf(req, url));
    if (!user) return new Response("unauthorized\n", { status: 401 });
    // Echo `v1.json` when the client offers it (the only encoding this peer speaks).
    const offered = (req.headers.get("sec-websocket-protocol") || "")
      .split(",")
      .map((s) => s.trim());
    const headers = offered.includes("v1.json") ? { "Sec-WebSocket-Protocol": "v1.json" } : undefined;
    if (server.upgrade(req, { data: { user }, headers })) return undefined;
    return new Response("websocket upgrade expected\n", { status: 400 });
  },
  websocket: {
    perMessageDeflate: false,
    idleTimeout: 120,
    open(ws) {
      sessions += 1;
      ws.send(
        JSON.stringify({
          op: "welcome",
          user: ws.data.user,
          node: "bun",
          session: `bun-${process.pid}-${sessions}`,
          ping_interval: 25,
        }),
      );
    },
    message(ws, raw) {
      let cmd;
      try {
        cmd = JSON.parse(typeof raw === "string" ? raw : raw.toString());
      } catch {
        return fail(ws, 0, "bad_request", "malformed frame");
      }
      const id = typeof cmd.id === "number" ? cmd.id : 0;
      const channel = cmd.channel;
      switch (cmd.op) {
        case "subscribe":
          if (typeof channel !== "string" || !channel) return fail(ws, id, "bad_request", "channel");
          ws.subscribe(channel);
          return reply(ws, id, { offset: offsets.get(channel) || 0, epoch: EPOCH, recovered: false });
        case "unsubscribe":
          if (typeof channel !== "string" || !channel) return fail(ws, id, "bad_request", "channel");
          if (!ws.isSubscribed(channel)) return fail(ws, id, "not_subscribed", channel);
          ws.unsubscribe(channel);
          return reply(ws, id, {});
        case "publish": {
          if (typeof channel !== "string" || !channel) return fail(ws, id, "bad_request", "channel");
          const offset = (offsets.get(channel) || 0) + 1;
          offsets.set(channel, offset);
          reply(ws, id, { offset });
          // server.publish reaches every subscriber, the publisher included (ws.publish
          // would skip the sender).
          server.publish(
            channel,
            JSON.stringify({
              op: "message",
              channel,
              offset,
              epoch: EPOCH,
              from: ws.data.user,
              data: cmd.data === undefined ? null : cmd.data,
              ts: Date.now(),
            }),
          );
          return;
        }
        case "ping":
          return reply(ws, id, {});
        default:
          return fail(ws, id, "bad_request", `unknown op ${cmd.op}`);
      }
    },
  },
});

console.log(`bun peer ${Bun.version} listening on ws://${server.hostname}:${server.port}/ws`);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { server.stop(true); process.exit(0); });
