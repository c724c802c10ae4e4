// socket.io peer for the benchmark (Node, socket.io v4, websocket transport only). It carries
// the load generator's subset of protocol v1 as socket.io events: the client emits "cmd" with
// a v1 command object, the server emits "msg" with every v1 reply or push. See ../README.md.
//
//   PORT (default 9002), HOST (default 127.0.0.1)
//   PING_INTERVAL_MS (default 25000, socket.io's default; the smoke test lowers it)
//   REDIS_URL (optional): share rooms and offsets between instances through Redis
//     (@socket.io/redis-adapter; offsets from INCR offset:{channel}).
//
// As with the Bun peer: the JWT's `sub` is read without verifying the signature; no ACL,
// presence, history or rate limits.

const http = require("node:http");
const { Server } = require("socket.io");

const PORT = Number(process.env.PORT || 9002);
const HOST = process.env.HOST || "127.0.0.1";
const REDIS_URL = process.env.REDIS_URL || "";
const EPOCH = "sio";

const { subFromToken } = require("../token.js");

function tokenOf(req) {
  const q = new URL(req.url, "http://x").searchParams.get("token");
  if (q) return q;
  const auth = req.headers.authorization;
  return auth && auth.startsWith("Bearer ") ? auth.slice(7) : null;
}

// Offsets: in memory for one instance, Redis INCR when instances share rooms.
let offsets;
let redisClients = [];

function memoryOffsets() {
  const map = new Map();
  return {
    next: async (channel) => {
      const n = (map.get(channel) || 0) + 1;
      map.set(channel, n);
      return n;
    },
    latest: async (channel) => map.get(channel) || 0,
  };
}

async function setupRedis(io) {
  const { createClient } = require("redis");
  const { createAdapter } = require("@socket.io/redis-adapter");
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  const cmd = pub.duplicate();
  for (const c of [pub, sub, cmd]) c.on("error", (e) => console.error("redis:", e.message));
  await Promise.all([pub.connect(), sub.connect(), cmd.connect()]);
  redisClients = [pub, sub, cmd];
  io.adapter(createAdapter(pub, sub));
  return {
    next: (channel) => cmd.incr(`offset:${channel}`),
    latest: async (channel) => Number((await cmd.get(`offset:${channel}`)) || 0),
  };
}

const httpServer = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    return res.end("ok\n");
  }
  // Only paths socket.io does not claim arrive here.
  res.writeHead(404);
  res.end();
});

const io = new Server(httpServer, {
  path: "/socket.io/",
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  pingInterval: Number(process.env.PING_INTERVAL_MS || 25000),
  // Refuse a bad token before the upgrade, as the gateway does (engine.io answers 400 here).
  allowRequest: (req, callback) => {
    const user = subFromToken(tokenOf(req));
    if (!user) return callback("invalid token", false);
    req.benchUser = user;
    callback(null, true);
  },
});

let sessions = 0;

io.on("connection", (socket) => {
  const user = socket.request.benchUser || subFromToken(socket.handshake.query.token);
  sessions += 1;
  socket.emit("msg", {
    op: "welcome",
    user,
    node: "sio",
    session: socket.id,
    ping_interval: 25,
  });
  const reply = (id, ok) => socket.emit("msg", { id, ok });
  const fail = (id, code, message) => socket.emit("msg", { id, error: { code, message } });

  socket.on("cmd", async (cmd) => {
    if (cmd === null || typeof cmd !== "object") return fail(0, "bad_request", "malformed frame");
    const id = typeof cmd.id === "number" ? cmd.id : 0;
    const channel = cmd.channel;
    const needsChannel = cmd.op === "subscribe" || cmd.op === "unsubscribe" || cmd.op === "publish";
    if (needsChannel && (typeof channel !== "string" || !channel)) {
      return fail(id, "bad_request", "channel");
    }
    try {
      switch (cmd.op) {
        case "subscribe":
          await socket.join(channel);
          return reply(id, { offset: await offsets.latest(channel), epoch: EPOCH, recovered: false });
        case "unsubscribe":
          if (!socket.rooms.has(channel)) return fail(id, "not_subscribed", channel);
          await socket.leave(channel);
          return reply(id, {});
        case "publish": {
          const offset = await offsets.next(channel);
          reply(id, { offset });
          // io.to() reaches every socket in the room, the publisher included.
          io.to(channel).emit("msg", {
            op: "message",
            channel,
            offset,
            epoch: EPOCH,
            from: user,
            data: cmd.data === undefined ? null : cmd.data,
            ts: Date.now(),
          });
          return;
        }
        case "ping":
          return reply(id, {});
        default:
          return fail(id, "bad_request", `unknown op ${cmd.op}`);
      }
    } catch (e) {
      return fail(id, "internal", String(e && e.message));
    }
  });
});

async function main() {
  offsets = REDIS_URL ? await setupRedis(io) : memoryOffsets();
  httpServer.listen(PORT, HOST, () => {
    const version = require("socket.io/package.json").version;
    console.log(
      `socket.io peer ${version} (node ${process.version}, ${REDIS_URL ? "redis adapter" : "in-memory adapter"}) ` +
        `listening on ws://${HOST}:${PORT}/socket.io/?EIO=4&transport=websocket`,
    );
  });
}

async function shutdown() {
  io.close();
  await Promise.allSettled(redisClients.map((c) => c.quit()));
  process.exit(0);
}
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, shutdown);

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
