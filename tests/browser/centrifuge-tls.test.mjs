// centrifuge-js over `wss://` to a gateway serving TLS itself (`--tls-cert`, `--tls-key`): a
// private authority and a server certificate made with the `openssl` command, the SDK's
// WebSocket (the `ws` package) trusting that authority only, a publication from the HTTP API
// over `https://` on the same port, and a connection that stays up across a SIGHUP that
// swaps the certificate.
//
// Run from the repository root after `cargo build -p gateway` and `npm ci --prefix tests/browser`:
//   node --test tests/browser/centrifuge-tls.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, copyFileSync } from 'node:fs';
import { request } from 'node:https';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';
import { API_KEY, connectionToken, startGateway, stopGateway } from './harness.mjs';

const WAIT = 20_000;
const SECRET = randomBytes(32).toString('hex');
const dir = mkdtempSync(path.join(tmpdir(), 'tls-test-'));
const file = (name) => path.join(dir, name);
let gw;
let ca;

/** Runs openssl with `args`. */
const openssl = (...args) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });

/** A server certificate named `cn` for 127.0.0.1, signed by the test authority: its files. */
function issue(cn) {
  const [key, csr, cert, chain, ext] = ['key', 'csr', 'pem', 'chain.pem', 'ext'].map((e) => file(`${cn}.${e}`));
  writeFileSync(ext, 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${cn}`,
    '-keyout', key, '-out', csr);
  openssl('x509', '-req', '-in', csr, '-CA', file('ca.pem'), '-CAkey', file('ca.key'), '-CAcreateserial',
    '-days', '2', '-extfile', ext, '-out', cert);
  writeFileSync(chain, Buffer.concat([readFileSync(cert), readFileSync(file('ca.pem'))]));
  return { key, chain };
}


/** The `ws` WebSocket, trusting the test authority only (the SDK passes url and protocols). */
class TrustingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { ca });
  }
}

/** POSTs `body` to the gateway's HTTP API over https; resolves with {status, json}. */
function api(method, body) {
  return new Promise((resolve, reject) => {
    const [host, port] = gw.addr.split(':');
    const req = request({
      host, port, path: `/api/${method}`, method: 'POST', ca,
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    }, (res) => {
      let text = '';
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => resolve({ status: res.statusCode, json: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/** The common name of the certificate the gateway presents to a new connection. */
function presentedName() {
  return new Promise((resolve, reject) => {
    const [host, port] = gw.addr.split(':');
    const socket = tlsConnect({ host, port: Number(port), ca, servername: 'localhost' }, () => {
      const name = socket.getPeerCertificate().subject.CN;
      socket.end();
      resolve(name);
    });
    socket.on('error', reject);
  });
}

/** Resolves with the first event `event` of `emitter` for which `pick` returns a value. */
function once(emitter, event, pick = (ctx) => ctx) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${WAIT} ms`)), WAIT);
    const listener = (ctx) => {
      const value = pick(ctx);
      if (value === undefined) return;
      clearTimeout(timer);
      emitter.removeListener(event, listener);
      resolve(value);
    };
    emitter.on(event, listener);
  });
}

before(async () => {
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', '/CN=browser test authority', '-keyout', file('ca.key'), '-out', file('ca.pem'));
  ca = readFileSync(file('ca.pem'));
  const first = issue('first');
  gw = await startGateway(['--jwt-secret', SECRET, '--tls-cert', first.chain, '--tls-key', first.key]);
});

after(async () => {
  await stopGateway(gw);
});

test('centrifuge-js over wss: subscribe, a publication by https, and a SIGHUP renewal', { timeout: 60_000 }, async () => {
  const client = new Centrifuge(`wss://${gw.addr}/connection/websocket`, {
    token: connectionToken(SECRET, 'tls-user'),
    websocket: TrustingWebSocket,
  });
  try {
    const sub = client.newSubscription('room:tls');
    const subscribed = once(sub, 'subscribed');
    sub.subscribe();
    client.connect();
    await subscribed;
    assert.equal(await presentedName(), 'first');

    const got = once(sub, 'publication', (ctx) => (ctx.data.n === 1 ? ctx : undefined));
    const r = await api('publish', { channel: 'room:tls', data: { n: 1 } });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    await got;

    // Renew the certificate in place and tell the node: new connections get it, this one
    // stays connected and keeps receiving.
    const second = issue('second');
    copyFileSync(second.chain, file('first.chain.pem'));
    copyFileSync(second.key, file('first.key'));
    let disconnected = false;
    client.on('disconnected', () => { disconnected = true; });
    gw.proc.kill('SIGHUP');
    const deadline = Date.now() + WAIT;
    while ((await presentedName()) !== 'second') {
      assert.ok(Date.now() < deadline, 'the renewed certificate within 20 s');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const again = once(sub, 'publication', (ctx) => (ctx.data.n === 2 ? ctx : undefined));
    await api('publish', { channel: 'room:tls', data: { n: 2 } });
    await again;
    assert.equal(disconnected, false, 'the connection from before the renewal stayed up');
  } finally {
    client.disconnect();
  }
});
