// centrifuge-js with `delta: 'fossil'` on a namespace that allows Fossil deltas, in both of
// the SDK's builds (JSON and Protobuf): a document of about 20 KB changed in one field 100
// times reaches the subscriber identical each time while the node writes (its
// `gateway_bytes_out_total`) under a tenth of the whole payloads; after a disconnect the
// subscription recovers with whole payloads in the subscribe reply, and deltas go on from
// the last of them.
//
// Run from the repository root after `cargo build -p gateway` and `npm ci --prefix tests/browser`:
//   node --test tests/browser/centrifuge-delta.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import { API_KEY, connectionToken, eventually, startGateway, stopGateway } from './harness.mjs';

const SECRET = randomBytes(32).toString('hex');
let gw;

/** A document of about 20 KB. */
function document() {
  const rows = [];
  for (let i = 0; i < 280; i += 1) {
    rows.push({ row: i, name: `instrument ${i}`, bid: i * 7, ask: i * 7 + 1, venue: 'XNAS' });
  }
  return { title: 'board', version: 0, rows };
}

/** Publishes `data` on `channel` through the HTTP API. */
async function publish(channel, data) {
  const r = await fetch(`http://${gw.addr}/api/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  });
  assert.equal(r.status, 200, await r.text());
}

/** The node's `gateway_bytes_out_total`. */
async function bytesOut() {
  const text = await (await fetch(`http://${gw.addr}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('gateway_bytes_out_total'));
  return Number(line.split(' ').pop());
}

/** `ws` that keeps the text of every JSON line the server sends (`seen`). */
function recordingWebSocket(seen) {
  return class extends WebSocket {
    constructor(...args) {
      super(...args);
      this.on('message', (data, isBinary) => {
        if (!isBinary) seen.push(...data.toString().split('\n'));
      });
    }
  };
}

before(async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'delta-test-'));
  const config = path.join(dir, 'gateway.toml');
  writeFileSync(config, '[[namespaces]]\nprefix = "doc:"\nopen = true\nallowed_delta_types = ["fossil"]\n');
  gw = await startGateway(['--jwt-secret', SECRET, '--config', config]);
});

after(async () => {
  await stopGateway(gw);
});

for (const [build, Centrifuge, protobuf] of [['JSON', JsonCentrifuge, false], ['Protobuf', ProtobufCentrifuge, true]]) {
  test(`centrifuge-js (${build}): 100 changes to a 20 KB document as Fossil deltas, then recovery`, { timeout: 120_000 }, async (t) => {
    const channel = `doc:board-${build.toLowerCase()}`;
    // What the SDK hands over, as the text the node sent: JSON text for Protobuf's bytes.
    const text = protobuf ? (data) => new TextDecoder().decode(data) : (data) => JSON.stringify(data);
    const seen = [];
    const client = new Centrifuge(`ws://${gw.addr}/connection/websocket`, {
      token: connectionToken(SECRET, `delta-${build}`),
      websocket: recordingWebSocket(seen),
      minReconnectDelay: 100,
      maxReconnectDelay: 500,
    });
    const got = [];
    let failed = null;
    client.on('error', (ctx) => { failed = ctx; });
    const sub = client.newSubscription(channel, { delta: 'fossil' });
    sub.on('publication', (ctx) => got.push(text(ctx.data)));
    let subscribed = 0;
    sub.on('subscribed', () => { subscribed += 1; });
    sub.subscribe();
    client.connect();
    try {
      await eventually('subscribed', () => subscribed === 1);
      const doc = document();
      const whole = Buffer.byteLength(JSON.stringify(doc));
      assert.ok(whole > 19_000, `${whole} bytes`);
      const before = await bytesOut();
      const sent = [];
      for (let i = 0; i < 100; i += 1) {
        doc.version = i + 1;
        doc.rows[(i * 37) % doc.rows.length].bid += 1;
        sent.push(JSON.stringify(doc));
        await publish(channel, doc);
        await eventually(`publication ${i + 1}`, () => got.length === i + 1);
        assert.equal(got[i], sent[i], `publication ${i + 1} identical`);
      }
      const written = (await bytesOut()) - before;
      t.diagnostic(`${written} bytes written for 100 publications of ${whole} bytes`);
      assert.ok(written < 0.1 * 100 * whole, `${written} bytes written for ${100 * whole} of payloads`);
      assert.equal(failed, null);

      // Away for five changes, back with recovery: whole payloads in the reply, then deltas.
      client.disconnect();
      for (let i = 100; i < 105; i += 1) {
        doc.version = i + 1;
        doc.title = `board ${i}`;
        sent.push(JSON.stringify(doc));
        await publish(channel, doc);
      }
      seen.length = 0;
      client.connect();
      await eventually('recovered', () => got.length === 105);
      assert.equal(subscribed, 2);
      assert.deepEqual(got.slice(100), sent.slice(100));
      if (!protobuf) {
        const reply = seen.map((line) => (line ? JSON.parse(line) : {})).find((m) => m.subscribe);
        assert.equal(reply.subscribe.recovered, true);
        assert.equal(reply.subscribe.publications.length, 5);
        assert.ok(reply.subscribe.publications.every((p) => !p.delta && typeof p.data === 'string'));
      }
      doc.version = 106;
      sent.push(JSON.stringify(doc));
      await publish(channel, doc);
      await eventually('the one after recovery', () => got.length === 106);
      assert.equal(got[105], sent[105]);
      if (!protobuf) {
        const last = seen.map((line) => (line ? JSON.parse(line) : {})).find((m) => m.push?.pub?.offset === 106);
        assert.equal(last.push.pub.delta, true, 'a delta from the last recovered one');
      }
      assert.equal(failed, null);
    } finally {
      client.disconnect();
    }
  });
}
