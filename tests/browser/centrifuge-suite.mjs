// The official Centrifugo JavaScript SDK (npm `centrifuge`, pinned in package.json) against a
// gateway's `/connection/websocket`, in Node with the `ws` package: connect with a token,
// subscribe, publish both ways with a v1 client in the same room, recovery after a client
// disconnect and after a server close that asks to reconnect, `recovered: false` for a
// position of another epoch, history, presence, join/leave, token refresh, subscription
// tokens and their refresh, application-level pings, and recovery on another node of a
// three-node cluster (one private redis-server) past recent history, from PostgreSQL
// (E2E_POSTGRES_URL, as ./scripts/test sets it; a fresh database is made for the test).
//
// The same steps run in both of the protocol's encodings: `centrifuge-json.test.mjs` (the
// SDK's default build) and `centrifuge-protobuf.test.mjs` (its `centrifuge/build/protobuf`
// build, binary frames). With Protobuf, payloads travel as bytes: the steps send JSON text
// as bytes and read it back, as an app sharing channels with JSON clients would.
//
// Run from the repository root after `cargo build -p gateway` and `npm ci --prefix tests/browser`:
//   node --test tests/browser/centrifuge-json.test.mjs tests/browser/centrifuge-protobuf.test.mjs

import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import WebSocket from 'ws';
import { API_KEY, restartRedisEmpty, scenario, startGateway, startRedis, stopGateway } from './harness.mjs';

/**
 * Registers every step, for the SDK build `Centrifuge` (`protobuf`: its Protobuf build).
 */
export function centrifugeSuite({ Centrifuge, protobuf }) {
/** A payload as the SDK build sends it: JSON text as bytes for Protobuf. */
const enc = protobuf ? (value) => new TextEncoder().encode(JSON.stringify(value)) : (value) => value;
/** A payload as the SDK build hands it over, read back as a value. */
const dec = protobuf ? (data) => JSON.parse(new TextDecoder().decode(data)) : (data) => data;

const WAIT = 20_000;
const SECRET = randomBytes(32).toString('hex');
const ROOM = `room:cf-${protobuf ? 'pb' : 'json'}-${randomBytes(4).toString('hex')}`;

let gw; // the node most steps use
let quick; // a node with a 2-second ping, for the heartbeat step
let redis; // for the cluster steps
let database; // the cluster's PostgreSQL database
const cluster = []; // three nodes on one Redis and one PostgreSQL database
const clients = [];

/** An HS256 JWT with `claims`. */
function jwt(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

/** A connection token for `sub`, valid for `secs` seconds. */
function token(sub, secs = 3600) {
  return jwt({ sub, exp: Math.floor(Date.now() / 1000) + secs });
}

/** A subscription token: `channel` for `sub`, valid for `secs` seconds. */
function subToken(sub, channel, secs = 3600) {
  return jwt({ sub, channel, exp: Math.floor(Date.now() / 1000) + secs });
}

/** Resolves with the first value `pick` returns for an event of `emitter`, within WAIT. */
function once(emitter, event, pick = (ctx) => ctx, what = event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, listener);
      reject(new Error(`no ${what} within ${WAIT} ms`));
    }, WAIT);
    const listener = (ctx) => {
      const value = pick(ctx);
      if (value === undefined || value === false) return;
      clearTimeout(timer);
      emitter.removeListener(event, listener);
      resolve(value);
    };
    emitter.on(event, listener);
  });
}

/**
 * `ws` for the SDK that also counts the server's application pings into `counter.pings`
 * (`{}` lines in JSON; in Protobuf a frame of one empty message, the single byte 0): the
 * heartbeat steps wait for pings, not for a span of time.
 */
function countingWebSocket(counter) {
  return class extends WebSocket {
    constructor(...args) {
      super(...args);
      this.on('message', (data, isBinary) => {
        if (isBinary) {
          const bytes = Buffer.from(data);
          if (bytes.length === 1 && bytes[0] === 0) counter.pings += 1;
        } else {
          counter.pings += data.toString().split('\n').filter((line) => line === '{}').length;
        }
      });
    }
  };
}

/** A centrifuge-js client of `user` on `node`, recording every event it sees (`pings`: the
 * server's pings it received). */
function sdk(user, node = gw, options = {}) {
  const counter = { pings: 0 };
  const client = new Centrifuge(`ws://${node.addr}/connection/websocket`, {
    token: token(user),
    websocket: countingWebSocket(counter),
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    ...options,
  });
  client.counter = counter;
  client.events = [];
  for (const e of ['connected', 'disconnected', 'error']) {
    client.on(e, (ctx) => client.events.push({ e, ctx }));
  }
  clients.push(client);
  return client;
}

/** A subscription that records its publications. */
function subscription(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  sub.pubs = [];
  sub.subscribedEvents = [];
  sub.on('publication', (ctx) => sub.pubs.push({ ...ctx, data: dec(ctx.data) }));
  sub.on('subscribed', (ctx) => sub.subscribedEvents.push(ctx));
  return sub;
}

/** Waits until `check()` is true, within `within` ms. */
async function eventually(what, check, within = WAIT) {
  const deadline = Date.now() + within;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`not within ${within} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A v1 client (docs/protocol.md) over `ws`: sends commands, collects every frame. */
async function v1(user, node = gw) {
  const socket = new WebSocket(`ws://${node.addr}/ws?token=${token(user)}`);
  const frames = [];
  socket.on('message', (data) => frames.push(JSON.parse(data.toString())));
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  let next = 1;
  const call = async (op, fields) => {
    const id = next++;
    socket.send(JSON.stringify({ id, op, ...fields }));
    await eventually(`reply to ${op}`, () => frames.some((f) => f.id === id));
    const reply = frames.find((f) => f.id === id);
    assert.ok(reply.ok, `${op} failed: ${JSON.stringify(reply)}`);
    return reply.ok;
  };
  return { socket, frames, call };
}

const step = scenario({
  timeout: 90_000,
  onFailure: async (err) => {
    for (const node of [gw, quick, ...cluster].filter(Boolean)) {
      err.message += `\n${node.addr}:\n${node.log.slice(-15).join('\n')}`;
    }
  },
});

before(async () => {
  gw = await startGateway(['--jwt-secret', SECRET]);
  quick = await startGateway(['--jwt-secret', SECRET, '--ping-interval-secs', '2', '--idle-timeout-secs', '6',
    '--jwt-leeway-secs', '5']);
});

after(async () => {
  for (const c of clients) c.disconnect();
  await stopGateway(gw);
  await stopGateway(quick);
  for (const node of cluster) await stopGateway(node);
  await stopGateway(redis ? { proc: redis.proc } : null);
  for (const node of [gw, quick, ...cluster].filter(Boolean)) {
    assert.ok(!node.log.some((l) => l.includes('panicked')), `${node.addr} panicked`);
  }
});

let alice; // centrifuge-js
let aliceRoom; // her subscription to ROOM
let bob; // v1

step('centrifuge-js connects with a token and subscribes', async () => {
  alice = sdk('alice');
  const connected = once(alice, 'connected');
  alice.connect();
  const ctx = await connected;
  assert.match(ctx.client, /./);
  aliceRoom = subscription(alice, ROOM);
  const subscribed = once(aliceRoom, 'subscribed');
  aliceRoom.subscribe();
  const sub = await subscribed;
  assert.equal(sub.recoverable, true);
  assert.equal(sub.wasRecovering, false);
});

step('a v1 client and centrifuge-js in one room see each other, with the same offsets', async () => {
  bob = await v1('bob');
  const joined = await bob.call('subscribe', { channel: ROOM });
  const published = await aliceRoom.publish(enc({ text: 'from centrifuge-js' }));
  assert.ok(published);
  await eventually('bob sees alice', () => bob.frames.some((f) => f.op === 'message' && f.data?.text === 'from centrifuge-js'));
  await eventually('alice sees her own message', () => aliceRoom.pubs.length === 1);
  const seenByBob = bob.frames.find((f) => f.op === 'message');
  assert.equal(aliceRoom.pubs[0].offset, seenByBob.offset);
  assert.equal(seenByBob.offset, joined.offset + 1);
  assert.equal(aliceRoom.pubs[0].info?.user, 'alice');
  const reply = await bob.call('publish', { channel: ROOM, data: { text: 'from v1' } });
  await eventually('alice sees bob', () => aliceRoom.pubs.length === 2);
  assert.deepEqual(aliceRoom.pubs[1].data, { text: 'from v1' });
  assert.equal(aliceRoom.pubs[1].offset, reply.offset);
});

/** Publishes `n` messages from bob; returns their offsets. */
async function bobPublishes(n, tag) {
  const offsets = [];
  for (let i = 0; i < n; i++) {
    offsets.push((await bob.call('publish', { channel: ROOM, data: { tag, i } })).offset);
  }
  return offsets;
}

/** Every offset alice saw, in order, runs one by one with no gap and no repeat. */
function assertContiguous(pubs) {
  for (let i = 1; i < pubs.length; i++) {
    assert.equal(pubs[i].offset, pubs[i - 1].offset + 1, `offsets ${pubs.map((p) => p.offset).join(',')}`);
  }
}

step('after disconnect() and connect(), what was published meanwhile is recovered', async () => {
  const before = aliceRoom.pubs.length;
  const disconnected = once(alice, 'disconnected');
  alice.disconnect();
  await disconnected;
  const offsets = await bobPublishes(5, 'missed');
  const resubscribed = once(aliceRoom, 'subscribed', (ctx) => ctx.wasRecovering && ctx, 'recovering subscribe');
  alice.connect();
  const ctx = await resubscribed;
  assert.equal(ctx.recovered, true);
  await eventually('the 5 missed messages', () => aliceRoom.pubs.length === before + 5);
  assert.deepEqual(aliceRoom.pubs.slice(before).map((p) => p.offset), offsets);
  assertContiguous(aliceRoom.pubs);
});

step('a server close that asks to reconnect is recovered from too', async () => {
  const before = aliceRoom.pubs.length;
  // A close the SDK reconnects after is not `disconnected` (that is for good) but `connecting`.
  const connecting = once(alice, 'connecting', (ctx) => ctx.code >= 3000 && ctx, 'connecting after the close');
  const reconnected = once(aliceRoom, 'subscribed', (ctx) => ctx.wasRecovering && ctx, 'recovering subscribe');
  const res = await fetch(`${gw.base}/api/disconnect`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ user: 'alice', reconnect: true }),
  });
  assert.equal(res.status, 200, await res.text());
  // 3011 (force reconnect) is a code the SDK reconnects after, by itself.
  assert.equal((await connecting).code, 3011);
  // Published while alice is away (or already back: either way she must get each once).
  const offsets = await bobPublishes(3, 'kicked');
  const ctx = await reconnected;
  assert.equal(ctx.recovered, true);
  await eventually('the 3 messages', () => aliceRoom.pubs.length === before + 3);
  assert.deepEqual(aliceRoom.pubs.slice(before).map((p) => p.offset), offsets);
  assertContiguous(aliceRoom.pubs);
});

step('a position of another epoch is not recovered: subscribed says recovered: false', async () => {
  const last = aliceRoom.pubs.at(-1).offset;
  aliceRoom.unsubscribe();
  alice.removeSubscription(aliceRoom);
  // Any position in an epoch the channel never had, as after a history reset.
  const other = subscription(alice, ROOM, { since: { offset: last, epoch: 'not-this-epoch' } });
  const subscribed = once(other, 'subscribed');
  other.subscribe();
  const ctx = await subscribed;
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, false);
  // The subscription is live all the same, and its stream position is the channel's.
  assert.notEqual(ctx.streamPosition.epoch, 'not-this-epoch');
  assert.equal(ctx.streamPosition.offset, last);
  const [offset] = await bobPublishes(1, 'after the epoch check');
  await eventually('the live message', () => other.pubs.length === 1);
  assert.equal(other.pubs[0].offset, offset);
  other.pubs = [...aliceRoom.pubs, ...other.pubs];
  aliceRoom = other;
});

step('history, presence and presence_stats', async () => {
  const history = await aliceRoom.history({ limit: 5 });
  assert.equal(history.publications.length, 5);
  assert.deepEqual(dec(history.publications[4].data), aliceRoom.pubs.at(-1).data);
  const last = aliceRoom.pubs.at(-1).offset;
  assert.deepEqual(history.publications.map((p) => p.offset), [last - 4, last - 3, last - 2, last - 1, last]);
  assert.equal(history.offset, last);
  assert.match(history.epoch, /./);
  const presence = await aliceRoom.presence();
  const users = Object.values(presence.clients).map((c) => c.user).sort();
  assert.deepEqual(users, ['alice', 'bob']);
  const stats = await aliceRoom.presenceStats();
  assert.equal(stats.numUsers, 2);
  assert.equal(stats.numClients, 2);
});

step('join and leave reach a subscription that asked for them', async () => {
  const carol = sdk('carol');
  carol.connect();
  const watch = subscription(carol, ROOM, { joinLeave: true });
  const subscribed = once(watch, 'subscribed');
  watch.subscribe();
  await subscribed;
  const joined = once(watch, 'join', (ctx) => ctx.info.user === 'dave' && ctx, 'join of dave');
  const left = once(watch, 'leave', (ctx) => ctx.info.user === 'dave' && ctx, 'leave of dave');
  const dave = await v1('dave');
  await dave.call('subscribe', { channel: ROOM });
  await joined;
  dave.socket.close();
  await left;
});

step('the connection token is refreshed before it expires, and the connection stays', async () => {
  let refreshes = 0;
  // On the node with a 5 s leeway: without a refresh the connection would end 3 + 5 s in.
  const erin = sdk('erin', quick, {
    token: token('erin', 3),
    getToken: async () => {
      refreshes += 1;
      return token('erin', 3600);
    },
  });
  const connected = once(erin, 'connected');
  erin.connect();
  await connected;
  await eventually('a refresh', () => refreshes >= 1);
  // Served past the first token's end (3 s + 5 s leeway): the node keeps pinging every 2 s,
  // and the sixth ping comes after it. Nothing may have closed the connection meanwhile.
  await eventually('6 pings', () => erin.counter.pings >= 6, 40_000);
  assert.deepEqual(erin.events.filter((x) => x.e !== 'connected'), []);
  assert.equal(erin.state, 'connected');
});

step('a subscription token grants a channel the connection token does not', async () => {
  const channel = `team:${randomBytes(4).toString('hex')}`;
  const ivan = sdk('ivan');
  ivan.connect();
  // Without a token, or with one for another channel or another user: permission denied
  // (103), which the SDK takes as final: `unsubscribed` with that code.
  for (const token of [undefined, subToken('ivan', 'team:other'), subToken('mallory', channel)]) {
    const refused = subscription(ivan, channel, token ? { token } : {});
    const failed = once(refused, 'unsubscribed', (ctx) => ctx, 'unsubscribed after the error');
    refused.subscribe();
    assert.equal((await failed).code, 103);
    ivan.removeSubscription(refused);
  }
  const granted = subscription(ivan, channel, { getToken: async () => subToken('ivan', channel) });
  const subscribed = once(granted, 'subscribed');
  granted.subscribe();
  await subscribed;
  const res = await fetch(`${gw.base}/api/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data: { secret: true } }),
  });
  assert.equal(res.status, 200, await res.text());
  await eventually('the message on the granted channel', () => granted.pubs.length === 1);
  assert.deepEqual(granted.pubs[0].data, { secret: true });
});

step('a subscription token is refreshed before it expires, and the subscription stays', async () => {
  const channel = `team:${randomBytes(4).toString('hex')}`;
  const judy = sdk('judy', quick);
  judy.connect();
  let tokens = 0;
  // 3 s tokens on the node with a 5 s leeway: each must be renewed by sub_refresh.
  const sub = subscription(judy, channel, {
    getToken: async () => {
      tokens += 1;
      return subToken('judy', channel, 3);
    },
  });
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  await subscribed;
  // An expired subscription would end (2501) and be subscribed again: neither may happen.
  const unsubscribed = [];
  sub.on('unsubscribed', (ctx) => unsubscribed.push(ctx));
  sub.on('subscribing', (ctx) => unsubscribed.push(ctx));
  // The first token is the subscribe's; each later one a sub_refresh. Past the first
  // token's end (3 s + 5 s leeway) with three refreshes, 2 s pings keep coming.
  await eventually('three refreshes', () => tokens >= 4, 40_000);
  const pings = judy.counter.pings;
  await eventually('2 more pings', () => judy.counter.pings >= pings + 2, 20_000);
  assert.deepEqual(unsubscribed, []);
  assert.equal(sub.state, 'subscribed');
  const res = await fetch(`${quick.base}/api/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data: { still: 'here' } }),
  });
  assert.equal(res.status, 200, await res.text());
  await eventually('the message', () => sub.pubs.length === 1);
});

step('the server API subscribes a user server-side, and its messages arrive', async () => {
  const channel = `team:${randomBytes(4).toString('hex')}`;
  const kate = sdk('kate');
  const connected = once(kate, 'connected');
  kate.connect();
  await connected;
  // A server-side subscription is the client's own `subscribed` and `publication` events.
  const subscribed = once(kate, 'subscribed', (ctx) => ctx.channel === channel && ctx, 'server-side subscribed');
  const api = (method, body) => fetch(`${gw.base}/centrifugo/api/${method}`, {
    method: 'POST',
    headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  }).then((res) => res.json());
  assert.deepEqual(await api('subscribe', { user: 'kate', channel }), { result: {} });
  await subscribed;
  const publication = once(kate, 'publication', (ctx) => ctx.channel === channel && ctx, 'server-side publication');
  const published = await api('publish', { channel, data: { hello: 'kate' } });
  const ctx = await publication;
  assert.deepEqual(dec(ctx.data), { hello: 'kate' });
  assert.equal(ctx.offset, published.result.offset);
});

step('an idle connection stays up past ping + 10 s: the SDK answers the pings', async () => {
  const frank = sdk('frank', quick);
  const connected = once(frank, 'connected');
  frank.connect();
  await connected;
  // The node pings every 2 s and closes after 6 s without a frame (3012); the SDK gives up
  // after 2 + 10 s without a ping. Seven pings answered span both.
  await eventually('7 pings', () => frank.counter.pings >= 7, 40_000);
  assert.deepEqual(frank.events.filter((x) => x.e !== 'connected'), []);
  assert.equal(frank.state, 'connected');
});

/** A fresh database on the PostgreSQL server of E2E_POSTGRES_URL; its URL. */
function freshDatabase() {
  const admin = process.env.E2E_POSTGRES_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
  const name = `cf_${randomBytes(6).toString('hex')}`;
  execFileSync('psql', [admin, '-v', 'ON_ERROR_STOP=1', '-qc', `CREATE DATABASE ${name}`]);
  const url = new URL(admin);
  url.pathname = `/${name}`;
  return url.toString();
}

step('on a three-node cluster, a client recovers on another node, past recent history', async () => {
  redis = await startRedis();
  database = freshDatabase();
  for (const id of ['cf-a', 'cf-b', 'cf-c']) {
    // Recent history holds 3 messages: the rest of what was missed comes from PostgreSQL.
    cluster.push(await startGateway(['--redis-url', redis.url, '--database-url', database,
      '--jwt-secret', SECRET, '--node-id', id, '--history-size', '3']));
  }
  const [a, b, c] = cluster;
  const room = `room:cf-cluster-${randomBytes(4).toString('hex')}`;
  const grace = sdk('grace', a);
  grace.connect();
  const onA = subscription(grace, room);
  const subscribed = once(onA, 'subscribed');
  onA.subscribe();
  const first = await subscribed;
  const henry = await v1('henry', b);
  const firstOffset = (await henry.call('publish', { channel: room, data: { n: 0 } })).offset;
  await eventually('grace sees the first message', () => onA.pubs.length === 1);
  const epoch = first.streamPosition.epoch;
  grace.disconnect();
  // Ten messages while she is away: more than recent history holds.
  const missed = [];
  for (let n = 1; n <= 10; n++) {
    missed.push((await henry.call('publish', { channel: room, data: { n } })).offset);
  }
  // Back on node C, from where she was.
  const again = sdk('grace', c);
  again.connect();
  const onC = subscription(again, room, { since: { offset: firstOffset, epoch } });
  const recovered = once(onC, 'subscribed');
  onC.subscribe();
  const ctx = await recovered;
  assert.equal(ctx.wasRecovering, true);
  assert.equal(ctx.recovered, true);
  await eventually('the 10 missed messages', () => onC.pubs.length === 10);
  assert.deepEqual(onC.pubs.map((p) => p.offset), missed);
  assert.deepEqual(onC.pubs.map((p) => p.data.n), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  // And live from node B again.
  await henry.call('publish', { channel: room, data: { n: 11 } });
  await eventually('the live message', () => onC.pubs.length === 11);
  assertContiguous(onC.pubs);
  henry.socket.close();
});

/** How many messages of `channel` PostgreSQL holds. */
function archivedCount(channel) {
  const sql = `SELECT count(*) FROM gw_messages WHERE channel = '${channel}'`;
  return Number(execFileSync('psql', [database, '-tAc', sql]).toString().trim());
}

/** Ids of publishWhenBack's commands: apart from the ones `call` uses. */
let retryId = 10_000;

/** Publishes from the v1 client `who`, retrying while the node answers `unavailable` (its
 * Redis is coming back), within WAIT; the offset. */
async function publishWhenBack(who, channel, data) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const id = retryId++;
    who.socket.send(JSON.stringify({ id, op: 'publish', channel, data }));
    await eventually(`reply to publish ${id}`, () => who.frames.some((f) => f.id === id));
    const reply = who.frames.find((f) => f.id === id);
    if (reply.ok) return reply.ok.offset;
    assert.equal(reply.error?.code, 'unavailable', JSON.stringify(reply));
    if (Date.now() > deadline) throw new Error(`still unavailable after ${WAIT} ms`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

step('after Redis restarts empty, offsets go on from the archive and the SDK recovers', async () => {
  const [a, b] = cluster;
  const room = `room:cf-restart-${randomBytes(4).toString('hex')}`;
  const lena = sdk('lena', a);
  lena.connect();
  const sub = subscription(lena, room);
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  const { epoch } = (await subscribed).streamPosition;
  const mike = await v1('mike', b);
  const before = [];
  for (let n = 0; n < 3; n++) {
    before.push((await mike.call('publish', { channel: room, data: { n } })).offset);
  }
  await eventually('lena sees the 3 messages', () => sub.pubs.length === 3);
  // Every message in PostgreSQL before Redis goes: the archive is what bridges the restart.
  await eventually('the 3 messages archived', () => archivedCount(room) === 3);
  const disconnected = once(lena, 'disconnected');
  lena.disconnect();
  await disconnected;
  await restartRedisEmpty(redis);
  const after = [];
  for (let n = 3; n < 5; n++) after.push(await publishWhenBack(mike, room, { n }));
  // The channel went on from its archived position, in the same epoch.
  assert.deepEqual(after, [before[2] + 1, before[2] + 2]);
  const recovered = once(sub, 'subscribed', (ctx) => ctx.wasRecovering && ctx, 'recovering subscribe');
  lena.connect();
  const ctx = await recovered;
  assert.equal(ctx.recovered, true);
  assert.equal(ctx.streamPosition.epoch, epoch);
  await eventually('the 2 missed messages', () => sub.pubs.length === 5);
  assert.deepEqual(sub.pubs.map((p) => p.offset), [...before, ...after]);
  assert.deepEqual(sub.pubs.map((p) => p.data.n), [0, 1, 2, 3, 4]);
  mike.socket.close();
});
}
