// centrifuge-js where WebSockets do not get through: with its `transports` list it falls
// back to HTTP-streaming (JSON and Protobuf builds), and to SSE when streaming fetch fails
// too (the `eventsource` package: Node 20 has no EventSource). Over each: subscribe, publish
// through `/emulation`, presence, and recovery after the stream is dropped (by the client,
// and by the server asking it to reconnect); and in a cluster, with every POST on another
// node than the stream.
//
// Run from the repository root after `cargo build -p gateway` and `npm ci --prefix tests/browser`:
//   node --test tests/browser/centrifuge-fallback.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { EventSource } from 'eventsource';
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import { API_KEY, connectionToken, eventually, startGateway, startRedis, stopGateway } from './harness.mjs';

const SECRET = randomBytes(32).toString('hex');
let gw;

/** Calls the HTTP API. */
async function api(method, body) {
  const r = await fetch(`http://${gw.addr}/api/${method}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  assert.equal(r.status, 200, text);
  return JSON.parse(text);
}

/** The transports list: a WebSocket endpoint that refuses the upgrade (as a proxy that blocks
 * WebSockets would), then HTTP-streaming (or a path that is not there, to block it too),
 * then SSE. */
function transports({ blockStream }) {
  const base = `http://${gw.addr}`;
  return [
    { transport: 'websocket', endpoint: `ws://${gw.addr}/blocked/websocket` },
    { transport: 'http_stream', endpoint: blockStream ? `${base}/blocked/http_stream` : `${base}/connection/http_stream` },
    { transport: 'sse', endpoint: `${base}/connection/sse` },
  ];
}

before(async () => {
  gw = await startGateway(['--jwt-secret', SECRET]);
});

after(async () => {
  await stopGateway(gw);
});

const cases = [
  ['HTTP-streaming, JSON', JsonCentrifuge, false, false, 'http_stream'],
  ['HTTP-streaming, Protobuf', ProtobufCentrifuge, true, false, 'http_stream'],
  ['SSE', JsonCentrifuge, false, true, 'sse'],
];

for (const [name, Centrifuge, protobuf, blockStream, expected] of cases) {
  test(`centrifuge-js falls back to ${name}: subscribe, publish, presence, recovery`, { timeout: 90_000 }, async () => {
    const enc = protobuf ? (v) => new TextEncoder().encode(JSON.stringify(v)) : (v) => v;
    const dec = protobuf ? (d) => JSON.parse(new TextDecoder().decode(d)) : (d) => d;
    const user = `fallback-${expected}-${protobuf ? 'pb' : 'json'}`;
    const channel = `room:${user}`;
    const client = new Centrifuge(transports({ blockStream }), {
      token: connectionToken(SECRET, user),
      websocket: WebSocket,
      eventsource: EventSource,
      emulationEndpoint: `http://${gw.addr}/emulation`,
      minReconnectDelay: 100,
      maxReconnectDelay: 500,
    });
    const transportsUsed = [];
    client.on('connected', (ctx) => transportsUsed.push(ctx.transport));
    const got = [];
    const subscribedEvents = [];
    const sub = client.newSubscription(channel);
    sub.on('publication', (ctx) => got.push({ offset: ctx.offset, data: dec(ctx.data) }));
    sub.on('subscribed', (ctx) => subscribedEvents.push(ctx));
    sub.subscribe();
    client.connect();
    try {
      await eventually('subscribed', () => subscribedEvents.length === 1);
      assert.deepEqual(transportsUsed, [expected]);

      // Publish from the client (a command through /emulation) and from the API.
      await sub.publish(enc({ n: 1 }));
      await api('publish', { channel, data: { n: 2 } });
      await eventually('both publications', () => got.length === 2);
      assert.deepEqual(got.map((p) => p.data), [{ n: 1 }, { n: 2 }]);

      // Presence and history answer through the stream.
      const presence = await sub.presence();
      assert.ok(Object.values(presence.clients).some((c) => c.user === user), JSON.stringify(presence));
      const history = await sub.history({ limit: 10 });
      assert.equal(history.publications.length, 2);

      // The client drops its stream; what is published meanwhile is recovered.
      client.disconnect();
      await api('publish', { channel, data: { n: 3 } });
      await api('publish', { channel, data: { n: 4 } });
      client.connect();
      await eventually('recovered after the client came back', () => got.length === 4);
      const second = subscribedEvents[1];
      assert.equal(second.wasRecovering, true);
      assert.equal(second.recovered, true);

      // The server ends the stream and asks for a reconnect: the SDK comes back by itself.
      await api('disconnect', { user, reconnect: true });
      await eventually('subscribed again after the server dropped the stream', () => subscribedEvents.length === 3);
      await api('publish', { channel, data: { n: 5 } });
      await eventually('the fifth', () => got.length === 5);
      assert.deepEqual(got.map((p) => p.data.n), [1, 2, 3, 4, 5]);
      assert.deepEqual(got.map((p) => p.offset), [1, 2, 3, 4, 5]);
      assert.ok(transportsUsed.every((t) => t === expected), JSON.stringify(transportsUsed));
    } finally {
      client.disconnect();
    }
  });
}

test('/emulation refuses a session the node does not hold, and what is not a request', async () => {
  const post = (body, type = 'application/json') => fetch(`http://${gw.addr}/emulation`, {
    method: 'POST', headers: { 'content-type': type }, body,
  });
  const forged = await post(JSON.stringify({ session: randomBytes(16).toString('hex'), node: 'any', data: '{}' }));
  assert.equal(forged.status, 404);
  assert.equal((await post('not json')).status, 400);
  assert.equal((await post(JSON.stringify({ session: 'x' }))).status, 400);
});

test('over HTTP-streaming in a cluster, the POSTs may land on another node than the stream', { timeout: 90_000 }, async () => {
  // Three nodes on one Redis: the stream on the first, every /emulation POST on the second
  // (as a load balancer without stickiness may send them), publications from the third.
  const redis = await startRedis();
  const nodes = [];
  try {
    for (let i = 0; i < 3; i += 1) {
      nodes.push(await startGateway(['--jwt-secret', SECRET, '--redis-url', redis.url]));
    }
    const [a, b, c] = nodes;
    const client = new JsonCentrifuge([
      { transport: 'websocket', endpoint: `ws://${a.addr}/blocked/websocket` },
      { transport: 'http_stream', endpoint: `http://${a.addr}/connection/http_stream` },
    ], {
      token: connectionToken(SECRET, 'cluster-roamer'),
      websocket: WebSocket,
      emulationEndpoint: `http://${b.addr}/emulation`,
      minReconnectDelay: 100,
      maxReconnectDelay: 500,
    });
    const got = [];
    const subscribedEvents = [];
    const sub = client.newSubscription('room:cluster-roam');
    sub.on('publication', (ctx) => got.push(ctx.data.n));
    sub.on('subscribed', (ctx) => subscribedEvents.push(ctx));
    sub.subscribe();
    client.connect();
    try {
      await eventually('subscribed', () => subscribedEvents.length === 1);
      await sub.publish({ n: 1 });
      const r = await fetch(`http://${c.addr}/api/publish`, {
        method: 'POST',
        headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ channel: 'room:cluster-roam', data: { n: 2 } }),
      });
      assert.equal(r.status, 200);
      await eventually('both publications', () => got.length === 2);
      const presence = await sub.presence();
      assert.ok(Object.values(presence.clients).some((x) => x.user === 'cluster-roamer'));
      // The client drops its stream and comes back: it recovers, its POSTs still elsewhere.
      client.disconnect();
      const r3 = await fetch(`http://${c.addr}/api/publish`, {
        method: 'POST',
        headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ channel: 'room:cluster-roam', data: { n: 3 } }),
      });
      assert.equal(r3.status, 200);
      client.connect();
      await eventually('recovered', () => got.length === 3);
      assert.deepEqual(got, [1, 2, 3]);
      assert.equal(subscribedEvents[1].recovered, true);
      const metrics = await (await fetch(`http://${b.addr}/metrics`)).text();
      const relayed = Number(metrics.split('\n').find((l) => l.startsWith('gateway_emulation_relayed_total')).split(' ').pop());
      assert.ok(relayed >= 3, `relayed ${relayed}`);
    } finally {
      client.disconnect();
    }
  } finally {
    for (const n of nodes) await stopGateway(n);
    redis.proc.kill('SIGKILL');
  }
});
