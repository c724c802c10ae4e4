// What the browser tests share: gateway and redis-server processes, and the browser.
//
// Environment: GATEWAY_BIN (default <repo>/target/debug/gateway), CHROMIUM_BIN (default
// /usr/bin/chromium). Screenshots go to <repo>/tests/artifacts/.

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { createHmac, randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const GATEWAY_BIN = process.env.GATEWAY_BIN || path.join(repo, 'target/debug/gateway');
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const ARTIFACTS = path.join(repo, 'tests/artifacts');
export const API_KEY = `browser-test-${randomBytes(8).toString('hex')}`;

/**
 * Starts a dev-mode gateway on a free port with the shared API key; resolves once it logs
 * "listening", with {proc, addr, base, log} (log: its last stderr lines).
 */
export function startGateway(extraArgs = []) {
  // Each node its own archive (an embedded node locks its data directory).
  const dataDir = mkdtempSync(path.join(tmpdir(), 'browser-gw-'));
  return new Promise((resolve, reject) => {
    const proc = spawn(
      GATEWAY_BIN,
      ['--dev', '--listen', '127.0.0.1:0', '--log-format', 'json', '--api-key', API_KEY,
        '--data-dir', dataDir, ...extraArgs],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const log = [];
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`gateway did not log "listening" within 20 s:\n${log.join('\n')}`));
    }, 20_000);
    proc.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${GATEWAY_BIN}: ${err.message} (build it: cargo build -p gateway)`));
    });
    proc.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`gateway exited early (${code ?? signal}):\n${log.join('\n')}`));
    });
    // Keep reading stderr for the whole run, so that the pipe never fills up.
    createInterface({ input: proc.stderr }).on('line', (line) => {
      log.push(line);
      if (log.length > 2000) log.shift();
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        return;
      }
      if (entry?.fields?.message === 'listening' && entry.fields.addr) {
        clearTimeout(timer);
        proc.removeAllListeners('exit');
        resolve({ proc, addr: entry.fields.addr, base: `http://${entry.fields.addr}`, log });
      }
    });
  });
}

/** Stops a process politely (SIGTERM), then for good after 5 s. */
export async function stopGateway(gw) {
  if (!gw) return;
  const { proc } = gw;
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

/** A free TCP port on 127.0.0.1. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Starts a private redis-server (no persistence); resolves once it answers. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'browser-redis-'));
  const redis = { port, dir, url: `redis://127.0.0.1:${port}` };
  redis.proc = await spawnRedis(port, dir);
  return redis;
}

/** Kills `redis` (from startRedis) and starts it again, empty, on the same port. */
export async function restartRedisEmpty(redis) {
  const exited = new Promise((resolve) => redis.proc.once('exit', resolve));
  redis.proc.kill('SIGKILL');
  await exited;
  // Nothing is saved (no RDB, no AOF): it comes back empty.
  redis.proc = await spawnRedis(redis.port, redis.dir);
}

/** A redis-server on `port` that keeps nothing on disk; resolves once it accepts. */
async function spawnRedis(port, dir) {
  const proc = spawn('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no', '--dir', dir],
    { stdio: 'ignore' });
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise((resolve) => {
      const socket = connect({ host: '127.0.0.1', port });
      socket.once('connect', () => { socket.destroy(); resolve(true); });
      socket.once('error', () => resolve(false));
    });
    if (up) return proc;
    if (Date.now() > deadline) throw new Error(`redis-server on ${port} did not start`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Headless Debian Chromium. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM_BIN,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
    ],
  });
}

/**
 * A page in a context of its own, its default timeout `timeout` ms, collecting its console
 * errors and uncaught exceptions in `errors`: {context, page, errors}.
 */
export async function newPage(browser, { timeout, viewport } = {}) {
  const context = await browser.newContext(viewport ? { viewport } : {});
  const page = await context.newPage();
  page.setDefaultTimeout(timeout);
  const errors = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  return { context, page, errors };
}

/**
 * Steps of one scenario, run in order: after a failing step the later ones are skipped, and
 * `onFailure(err)` runs first (screenshots, console errors, log lines added to the message).
 */
export function scenario({ timeout, onFailure }) {
  let failed = false;
  return function step(name, fn) {
    test(name, { timeout }, async (t) => {
      if (failed) {
        t.skip('an earlier step failed');
        return;
      }
      try {
        await fn(t);
      } catch (err) {
        failed = true;
        await onFailure(err).catch(() => {});
        throw err;
      }
    });
  };
}

/** An HS256 connection token for `sub` signed with `secret` (the node's --jwt-secret), valid
 * for `secs` seconds. */
export function connectionToken(secret, sub, secs = 3600) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + secs })}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/** Waits until `check()` is true, within `within` ms (checking every 20 ms). */
export async function eventually(what, check, within = 20_000) {
  const deadline = Date.now() + within;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`not within ${within} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
