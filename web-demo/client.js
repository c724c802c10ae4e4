/**
 * client.js: a small browser client for the gateway's wire protocol v1, JSON encoding
 * (`v1.json`). No dependencies and no build step: copy this one file into an app.
 *
 * What it does for you:
 * - connects with a JWT (`?token=`), to a fixed URL or one resolved per attempt (e.g. `/v1/route`);
 * - request/reply by `id`, as promises with a timeout;
 * - reconnects by itself with exponential backoff and jitter, honouring `disconnect.reconnect`
 *   (false: it stays offline and says why);
 * - remembers, per channel, the epoch and the last offset it delivered; after a reconnect it
 *   re-subscribes every channel with `since`/`epoch` (the personal `user:<me>` channel too), so
 *   what was missed arrives in order, and it drops repeats by offset;
 * - tells the app when a channel could not be recovered (`recovery` event, `recovered: false`),
 *   so the app reloads it with `history`;
 * - refreshes the token before it expires (`refresh` op, 60 s or 20% of the lifetime before
 *   `exp`, whichever is sooner), with a token from the app's `getToken()`;
 * - reports its connection state: `connecting`, `live`, `reconnecting` (with seconds until the
 *   next try) and `offline` (with the reason).
 *
 * @example
 * import { GatewayClient } from './client.js';
 * const client = new GatewayClient({
 *   url: async (token) => 'wss://chat.example.com/ws',     // or simply a string
 *   getToken: async () => fetch('/my-backend/token').then((r) => r.json()), // {token, exp} or a JWT string
 * });
 * client.on('state', (s) => console.log(s.state, s.retryIn, s.reason));
 * client.on('message', (m) => render(m));                   // {channel, offset, epoch, from, data, ts}
 * client.on('recovery', ({ channel, recovered }) => { if (!recovered) reloadFromHistory(channel); });
 * client.connect().catch((e) => console.warn('offline:', e.code));
 * const page = await client.history('room:lobby', { limit: 50 });
 * await client.subscribe('room:lobby', { since: page.offset, epoch: page.epoch });
 * const { offset } = await client.publish('room:lobby', { text: 'hello' });
 *
 * ## Constructor options
 * @typedef {object} GatewayClientOptions
 * @property {string | ((token: string) => (string | Promise<string>))} url
 *   The WebSocket URL (`ws://`, `wss://`, or a path such as `/ws` on the page's origin), or a
 *   function called before every attempt with the current token that returns one.
 * @property {() => Promise<TokenInfo | string>} getToken
 *   Returns a fresh token for the same user. Called when the client has no token, when the
 *   current one is about to expire, after `token_expired`, and after repeated failed handshakes.
 * @property {TokenInfo | string} [token] A token to start with (else `getToken()` is called).
 * @property {string} [protocol='v1.json'] The WebSocket subprotocol. Only JSON is implemented.
 * @property {number} [requestTimeout=10000] Default reply timeout of a request, in ms.
 * @property {number} [publishTimeout=30000] How long `publish` keeps retrying, in ms.
 * @property {number} [backoffBase=1000] First reconnect delay (before jitter), in ms.
 * @property {number} [backoffMax=30000] Largest reconnect delay, in ms.
 * @property {number} [refreshLead=60] Refresh at most this many seconds before `exp`
 *   (and at most 20% of the token's lifetime before it).
 *
 * @typedef {{token: string, exp?: number}} TokenInfo `exp` in Unix seconds; read from the JWT when absent.
 *
 * ## Methods
 * - `connect(): Promise<void>` starts connecting; resolves when live, rejects with a
 *   `GatewayError` when the client ends up offline first.
 * - `close(): void` closes for good (state `offline`, reason `closed`); `connect()` starts again.
 * - `reconnectNow(): void` skips the wait of a pending retry (or reconnects when offline).
 * - `request(op, fields?, {timeout?, liveTimeout?}): Promise<object>` sends `{id, op, ...fields}`
 *   once live and resolves with the reply's `ok`, or rejects with a `GatewayError` whose `code`
 *   is the server's error code, or `timeout`, `disconnected` (the socket closed before the
 *   reply) or `offline`.
 * - `subscribe(channel, {since?, epoch?, joinLeave?}): Promise<{offset, epoch, recovered}>` keeps
 *   the channel subscribed across reconnects. With `since` the server replays what came after it.
 *   `joinLeave` (`'diff'`, `'each'` or `'off'`; the namespace's default when not given) says how
 *   presence changes arrive: `presence_diff` events, one `join`/`leave` each, or not at all.
 * - `unsubscribe(channel): Promise<void>`.
 * - `publish(channel, data, {idem?, timeout?}): Promise<{offset}>` retries over reconnects with
 *   the same idempotency key (generated when not given), so a message is published at most once.
 * - `history(channel, {since?, limit?})`, `presence(channel, {limit?, cursor?})`,
 *   `presenceStats(channel)`, `ping()`: the protocol's ops.
 * - `rpc(method, data?, {timeout?}): Promise<any>` calls a method of the app's backend (the
 *   gateway's rpc proxy) and resolves with its answer.
 * - `on(event, listener): () => void` adds a listener and returns a function that removes it;
 *   `off(event, listener)`.
 * - Read-only properties: `state`, `user` (from `welcome`), `node`, `session`, `tokenExp`.
 *
 * ## Events
 * - `state`: `{state, retryIn, retryAt, reason, attempt}`. `state` is `connecting` (first
 *   attempt), `live`, `reconnecting` (`retryIn` seconds until the next attempt, emitted every
 *   second while waiting; `retryIn` 0 while an attempt is under way; `reason` is why the last
 *   connection ended) or `offline` (`reason`: a `disconnect.code` such as `disconnected`,
 *   `policy`, or `closed` after `close()`).
 * - `welcome`: the server's welcome push.
 * - `message`: a `message` push, in offset order, each offset once per channel and epoch.
 * - `join`, `leave`: `{channel, user}` presence pushes (subscriptions with `joinLeave: 'each'`).
 * - `presence_diff`: `{channel, joins, leaves, overflow}`, the users who joined and left since the
 *   last one (subscriptions with `joinLeave: 'diff'`); `overflow` means too many changed to
 *   list: read `presence` again.
 * - `unsubscribed`: `{channel, code}` when the server ended a subscription for good (a
 *   backend's `/api/unsubscribe`); a server `unsubscribe` push with `resubscribe` is handled
 *   here by subscribing again with `since`.
 * - `recovery`: `{channel, recovered, offset, epoch}` after every re-subscribe with `since`;
 *   `recovered: false` means messages may be missing: reload the channel with `history`.
 * - `refresh`: `{exp}` after a successful token refresh.
 * - `error`: `{error, context}` for problems that do not reject a promise of yours (a failed
 *   re-subscribe, a failed refresh, a failed attempt, an unreadable frame).
 */

const DEFAULTS = {
  protocol: 'v1.json',
  requestTimeout: 10_000,
  publishTimeout: 30_000,
  backoffBase: 1_000,
  backoffMax: 30_000,
  refreshLead: 60,
};

/** Close codes the server uses, by `disconnect.code`, for when no `disconnect` push came. */
const CLOSE_CODES = {
  1000: 'normal',
  1008: 'policy',
  1009: 'too_large',
  1011: 'internal',
  1012: 'shutdown',
  4001: 'token_expired',
  4002: 'slow_consumer',
  4003: 'rate_limited',
  4004: 'heartbeat_timeout',
  4005: 'disconnected',
};
const NO_RECONNECT_CLOSE = new Set([1000, 1008, 1009]);
/** Publish errors worth retrying with the same idempotency key. */
const RETRYABLE = new Set(['timeout', 'disconnected', 'rate_limited', 'unavailable']);

/**
 * An error from the gateway (`code` is the protocol's error code) or from this client.
 * `maybePublished` (publish only): true when the message may still be published (the gateway
 * said `maybe_published: true`, or a reply never came), false when it surely was not.
 * `backendCode`: the app's backend refused (a proxy's error), with this code of its own.
 */
export class GatewayError extends Error {
  /**
   * @param {string} code @param {string} [message] @param {boolean} [maybePublished]
   * @param {number} [backendCode]
   */
  constructor(code, message, maybePublished, backendCode) {
    super(message || code);
    this.name = 'GatewayError';
    this.code = code;
    if (maybePublished !== undefined) this.maybePublished = maybePublished;
    if (backendCode !== undefined) this.backendCode = backendCode;
  }
}

/** A random hex string (works outside secure contexts too). */
export function randomId(bytes = 12) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** `exp` (Unix seconds) of a JWT, or 0 when it cannot be read. */
/** A JWT's claims, unverified (the gateway verifies; the client only reads them). */
function jwtClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part)) || {};
  } catch {
    return {};
  }
}

function jwtExp(token) {
  const exp = jwtClaims(token).exp;
  return typeof exp === 'number' ? exp : 0;
}

function normalizeToken(t) {
  if (typeof t === 'string') return { token: t, exp: jwtExp(t) };
  if (t && typeof t.token === 'string') {
    return { token: t.token, exp: typeof t.exp === 'number' ? t.exp : jwtExp(t.token) };
  }
  throw new GatewayError('unauthorized', 'getToken() returned no token');
}

/** `url` with `token` (and `user`) as query parameters; a path is taken relative to the
 * page's origin. */
function socketUrl(url, token) {
  const base = typeof location !== 'undefined'
    ? `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/`
    : undefined;
  const u = new URL(url, base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  if (u.protocol === 'https:') u.protocol = 'wss:';
  u.searchParams.set('token', token);
  // The user id (the token's subject), for a load balancer that keeps a user's connections
  // on one node by hashing on it (deploy/nginx.conf); the gateway itself ignores it.
  const sub = jwtClaims(token).sub;
  if (typeof sub === 'string' && sub) u.searchParams.set('user', sub);
  return u.toString();
}

const nowSecs = () => Date.now() / 1000;

export class GatewayClient {
  /** @param {GatewayClientOptions} options */
  constructor(options) {
    this.options = { ...DEFAULTS, ...options };
    if (!this.options.url) throw new TypeError('GatewayClient: `url` is required');
    if (typeof this.options.getToken !== 'function') {
      throw new TypeError('GatewayClient: `getToken` must be a function');
    }
    /** @type {'connecting'|'live'|'reconnecting'|'offline'} */
    this.state = 'offline';
    this.user = null;
    this.node = null;
    this.session = null;
    this._listeners = new Map();
    this._ws = null;
    this._gen = 0; // one per connection attempt
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, timer}
    this._channels = new Map(); // channel -> {epoch, offset, gen, waiters: []}
    this._liveWaiters = new Set();
    this._wanted = false;
    this._everLive = false;
    this._attempt = 0;
    this._failedOpens = 0;
    this._forceNewToken = false;
    this._liveSince = 0;
    this._lastReason = null;
    this._retryTimer = null;
    this._tickTimer = null;
    this._refreshTimer = null;
    this._heartbeatTimer = null;
    this._waitingForNetwork = false;
    this._token = null;
    this._exp = 0;
    this._lifetime = 0;
    if (this.options.token) this._setToken(normalizeToken(this.options.token));
    this._onOnline = () => {
      if (this._waitingForNetwork) this.reconnectNow();
    };
    if (typeof window !== 'undefined') window.addEventListener('online', this._onOnline);
  }

  /** `exp` of the current token, Unix seconds. */
  get tokenExp() {
    return this._exp;
  }

  // ---- events ----

  /** @param {string} event @param {(detail: any) => void} listener @returns {() => void} */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  _emit(event, detail) {
    for (const listener of [...(this._listeners.get(event) || [])]) {
      try {
        listener(detail);
      } catch (err) {
        // A listener's bug must not break the connection; report it like an uncaught error.
        if (typeof reportError === 'function') reportError(err);
        else setTimeout(() => { throw err; });
      }
    }
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit('state', {
      state,
      retryIn: 0,
      retryAt: null,
      reason: state === 'live' ? null : this._lastReason,
      attempt: this._attempt,
      ...extra,
    });
  }

  // ---- connection ----

  /** Starts connecting. Resolves when live; rejects with a GatewayError if it ends up offline. */
  connect() {
    if (!this._wanted) {
      this._wanted = true;
      this._attempt = 0;
      this._lastReason = null;
      this._open();
    }
    return this._whenLive(Infinity);
  }

  /** Closes the connection for good: no reconnect. */
  close() {
    this._wanted = false;
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    this._gen++;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        /* already closed */
      }
    }
    this._failPending('disconnected');
    this._goOffline('closed');
  }

  /** Skips the wait of a pending retry, or reconnects after going offline. */
  reconnectNow() {
    if (!this._wanted) {
      this.connect().catch(() => {});
    } else if (!this._ws) {
      this._open();
    }
  }

  _clearTimers() {
    clearTimeout(this._retryTimer);
    clearInterval(this._tickTimer);
    clearTimeout(this._refreshTimer);
    clearInterval(this._heartbeatTimer);
    this._retryTimer = this._tickTimer = this._refreshTimer = this._heartbeatTimer = null;
    this._waitingForNetwork = false;
  }

  _goOffline(reason) {
    this._wanted = false;
    this._lastReason = reason;
    this._setState('offline', { reason });
    const err = new GatewayError('offline', `offline: ${reason}`);
    for (const w of this._liveWaiters) w.reject(err);
    this._liveWaiters.clear();
    for (const ch of this._channels.values()) this._rejectWaiters(ch, err);
  }

  _setToken(t) {
    this._token = t.token;
    this._exp = t.exp;
    this._lifetime = t.exp ? Math.max(0, t.exp - nowSecs()) : 0;
  }

  /** Seconds before `exp` at which the token is refreshed. */
  _refreshLead() {
    return Math.min(this.options.refreshLead, this._lifetime * 0.2);
  }

  async _ensureToken() {
    const stale = this._exp && this._exp - nowSecs() <= this._refreshLead() + 1;
    if (!this._token || stale || this._forceNewToken) {
      this._setToken(normalizeToken(await this.options.getToken()));
      this._forceNewToken = false;
    }
    return this._token;
  }

  async _open() {
    clearTimeout(this._retryTimer);
    clearInterval(this._tickTimer);
    this._waitingForNetwork = false;
    const gen = ++this._gen;
    this._setState(this._everLive ? 'reconnecting' : 'connecting', { retryIn: 0 });
    let url;
    try {
      const token = await this._ensureToken();
      if (gen !== this._gen || !this._wanted) return;
      const target = typeof this.options.url === 'function'
        ? await this.options.url(token)
        : this.options.url;
      if (gen !== this._gen || !this._wanted) return;
      url = socketUrl(target, token);
    } catch (error) {
      if (gen !== this._gen || !this._wanted) return;
      this._emit('error', { error, context: 'connect' });
      this._lastReason = error instanceof GatewayError ? error.code : 'connect_failed';
      this._scheduleReconnect();
      return;
    }
    const ws = new WebSocket(url, this.options.protocol);
    ws._opened = false;
    ws._disconnect = null;
    this._ws = ws;
    ws.onopen = () => {
      ws._opened = true;
    };
    ws.onmessage = (e) => this._onFrame(ws, gen, e.data);
    ws.onerror = () => {}; // a close event follows
    ws.onclose = (e) => this._onClosed(ws, e.code);
  }

  _onClosed(ws, closeCode) {
    if (ws !== this._ws) return;
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    clearInterval(this._heartbeatTimer);
    clearTimeout(this._refreshTimer);
    this._failPending('disconnected');
    const info = ws._disconnect;
    const reason = info?.code || CLOSE_CODES[closeCode] || (ws._opened ? 'connection_lost' : 'connect_failed');
    const reconnect = info ? info.reconnect !== false : !NO_RECONNECT_CLOSE.has(closeCode);
    this._lastReason = reason;
    if (ws._opened) this._failedOpens = 0;
    else this._failedOpens++;
    // A handshake refused twice in a row may be a rejected token (a browser cannot see the 401).
    if (reason === 'token_expired' || this._failedOpens >= 2) this._forceNewToken = true;
    if (this._liveSince && Date.now() - this._liveSince > 5_000) this._attempt = 0;
    this._liveSince = 0;
    if (!this._wanted) return;
    if (!reconnect) {
      this._goOffline(reason);
      return;
    }
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    const { backoffBase, backoffMax } = this.options;
    const cap = Math.min(backoffMax, backoffBase * 2 ** Math.min(this._attempt, 20));
    const delay = cap / 2 + (Math.random() * cap) / 2; // "equal jitter"
    this._attempt++;
    const retryAt = Date.now() + delay;
    const tick = () => {
      const retryIn = Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
      this._setState('reconnecting', { retryIn, retryAt });
    };
    tick();
    clearInterval(this._tickTimer);
    this._tickTimer = setInterval(tick, 1000);
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => {
      clearInterval(this._tickTimer);
      if (typeof navigator !== 'undefined' && navigator.onLine === false) {
        // No network: wait for the browser's `online` event instead of failing attempts.
        this._waitingForNetwork = true;
        this._setState('reconnecting', { retryIn: 0, waitingForNetwork: true });
        return;
      }
      this._open();
    }, delay);
  }

  _onFrame(ws, gen, raw) {
    if (ws !== this._ws) return;
    this._lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch (error) {
      this._emit('error', { error, context: 'frame' });
      return;
    }
    if (!frame || typeof frame !== 'object') return;
    if (typeof frame.id === 'number' && ('ok' in frame || 'error' in frame)) {
      const p = this._pending.get(frame.id);
      if (!p) return;
      this._pending.delete(frame.id);
      clearTimeout(p.timer);
      if (frame.error) {
        const e = frame.error;
        p.reject(new GatewayError(e.code, e.message, e.maybe_published, e.backend_code));
      }
      else p.resolve(frame.ok);
      return;
    }
    switch (frame.op) {
      case 'welcome':
        this._onWelcome(ws, gen, frame);
        break;
      case 'message':
        this._onMessage(frame);
        break;
      case 'join':
      case 'leave':
        if (this._channels.has(frame.channel)) {
          this._emit(frame.op, { channel: frame.channel, user: frame.user });
        }
        break;
      case 'presence_diff':
        if (this._channels.has(frame.channel)) {
          this._emit('presence_diff', {
            channel: frame.channel,
            joins: frame.joins || [],
            leaves: frame.leaves || [],
            overflow: !!frame.overflow,
          });
        }
        break;
      case 'disconnect':
        ws._disconnect = { code: frame.code, reconnect: frame.reconnect };
        break;
      case 'unsubscribe': {
        // The server ended a subscription. With `resubscribe` (it lost messages it could not
        // heal) subscribe again from the last offset seen: `recovered` says whether to reload.
        const ch = this._channels.get(frame.channel);
        if (!ch) break;
        if (frame.resubscribe) {
          ch.gen = 0;
          this._subscribeNow(frame.channel, this._gen);
        } else {
          this._channels.delete(frame.channel);
          this._emit('unsubscribed', { channel: frame.channel, code: frame.code });
        }
        break;
      }
      default:
        this._emit('push', frame);
    }
  }

  async _onWelcome(ws, gen, welcome) {
    this.user = welcome.user;
    this.node = welcome.node;
    this.session = welcome.session;
    this._emit('welcome', welcome);
    // The server subscribed us to our personal channel; track it so that a reconnect re-syncs it.
    const personal = `user:${welcome.user}`;
    if (!this._channels.has(personal)) {
      this._channels.set(personal, { epoch: null, offset: null, gen: 0, waiters: [] });
    }
    this._startHeartbeat(ws, gen, welcome.ping_interval);
    // Re-subscribe everything (channels added meanwhile included) before calling it live.
    for (;;) {
      const todo = [...this._channels].filter(([, ch]) => ch.gen !== gen);
      if (todo.length === 0) break;
      await Promise.all(todo.map(([name]) => this._subscribeNow(name, gen)));
      if (gen !== this._gen || ws !== this._ws || ws.readyState !== 1) return;
    }
    if (gen !== this._gen || ws !== this._ws) return;
    this._everLive = true;
    this._liveSince = Date.now();
    this._lastReason = null;
    this._setState('live');
    for (const w of this._liveWaiters) w.resolve();
    this._liveWaiters.clear();
    this._scheduleRefresh();
  }

  _startHeartbeat(ws, gen, pingInterval) {
    // The server pings and the browser answers by itself; this only notices a dead socket that
    // the browser has not noticed yet, with a `ping` op when nothing came for a while.
    const every = Math.max(5, Number(pingInterval) || 25) * 1000;
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = setInterval(() => {
      if (ws !== this._ws || Date.now() - this._lastFrameAt < every) return;
      this._call('ping', {}, 10_000, gen).catch(() => {
        if (ws !== this._ws) return;
        ws._disconnect = { code: 'heartbeat_timeout', reconnect: true };
        this._onClosed(ws, 4004);
        try {
          ws.close();
        } catch {
          /* already closing */
        }
      });
    }, every);
  }

  // ---- token refresh ----

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    if (!this._exp) return;
    const at = (this._exp - this._refreshLead()) * 1000;
    const delay = Math.min(Math.max(0, at - Date.now()), 2 ** 31 - 1);
    this._refreshTimer = setTimeout(() => this._refresh(), delay);
  }

  async _refresh() {
    if (this.state !== 'live') return; // the next connection fetches a fresh token if needed
    try {
      const t = normalizeToken(await this.options.getToken());
      const ok = await this.request('refresh', { token: t.token });
      this._setToken({ token: t.token, exp: typeof ok.exp === 'number' ? ok.exp : t.exp });
      this._emit('refresh', { exp: this._exp });
      this._scheduleRefresh();
    } catch (error) {
      this._emit('error', { error, context: 'refresh' });
      if (this.state !== 'live') return;
      // Try again soon, but before the token runs out; the server closes with token_expired
      // at `exp` otherwise, and the reconnect then gets a fresh token.
      const left = this._exp * 1000 - Date.now();
      clearTimeout(this._refreshTimer);
      this._refreshTimer = setTimeout(() => this._refresh(), Math.max(1000, Math.min(15_000, left / 2)));
    }
  }

  // ---- requests ----

  _whenLive(timeout) {
    if (this.state === 'live') return Promise.resolve();
    if (!this._wanted) return Promise.reject(new GatewayError('offline', 'not connected'));
    return new Promise((resolve, reject) => {
      const w = { resolve, reject, timer: null };
      const done = () => {
        clearTimeout(w.timer);
        this._liveWaiters.delete(w);
      };
      w.resolve = () => { done(); resolve(); };
      w.reject = (e) => { done(); reject(e); };
      if (Number.isFinite(timeout)) {
        w.timer = setTimeout(() => w.reject(new GatewayError('timeout', 'not connected in time')), timeout);
      }
      this._liveWaiters.add(w);
    });
  }

  /** Sends a command on the current socket and waits for its reply. */
  _call(op, fields, timeout, gen = this._gen) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1 || gen !== this._gen) {
      return Promise.reject(new GatewayError('disconnected', 'not connected'));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new GatewayError('timeout', `no reply to ${op} in ${timeout} ms`));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ ...fields, id, op }));
    });
  }

  _failPending(code) {
    const err = new GatewayError(code, 'the connection closed before the reply');
    for (const p of this._pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this._pending.clear();
  }

  /**
   * Sends a command once live; resolves with the reply's `ok`.
   * @param {string} op @param {object} [fields]
   * @param {{timeout?: number, liveTimeout?: number}} [opts] `timeout` for the reply (ms),
   *   `liveTimeout` for waiting to be live first (defaults to `timeout`; `Infinity` waits).
   */
  async request(op, fields = {}, { timeout = this.options.requestTimeout, liveTimeout = timeout } = {}) {
    await this._whenLive(liveTimeout);
    return this._call(op, fields, timeout);
  }

  // ---- channels ----

  _rejectWaiters(ch, err) {
    const waiters = ch.waiters;
    ch.waiters = [];
    for (const w of waiters) w.reject(err);
  }

  async _subscribeNow(channel, gen) {
    const ch = this._channels.get(channel);
    if (!ch) return;
    const resync = ch.offset != null;
    const fields = { channel };
    if (ch.joinLeave) fields.join_leave = ch.joinLeave;
    if (resync) {
      fields.since = ch.offset;
      if (ch.epoch) fields.epoch = ch.epoch;
    }
    let ok;
    try {
      ok = await this._call('subscribe', fields, this.options.requestTimeout, gen);
    } catch (error) {
      if (gen !== this._gen) return; // the socket went away; the next one retries
      if (error.code === 'timeout' || error.code === 'disconnected') {
        // Leave it for the next connection; close this one so that it comes soon.
        this._ws?.close(4000, 'subscribe timed out');
        return;
      }
      this._channels.delete(channel);
      this._rejectWaiters(ch, error);
      this._emit('error', { error, context: 'subscribe', channel });
      return;
    }
    if (this._channels.get(channel) !== ch) return; // unsubscribed meanwhile
    ch.gen = gen;
    if (!resync) {
      if (ch.epoch !== ok.epoch) {
        ch.epoch = ok.epoch;
        ch.offset = ok.offset;
      } else {
        ch.offset = Math.max(ch.offset ?? 0, ok.offset);
      }
    } else {
      if (!ok.recovered) {
        // Nothing usable is replayed: continue from the channel's current position.
        ch.epoch = ok.epoch;
        ch.offset = ok.offset;
      }
      this._emit('recovery', { channel, recovered: !!ok.recovered, offset: ok.offset, epoch: ok.epoch });
    }
    const waiters = ch.waiters;
    ch.waiters = [];
    for (const w of waiters) w.resolve(ok);
  }

  _onMessage(m) {
    const ch = this._channels.get(m.channel);
    if (!ch) return; // unsubscribed meanwhile
    if (ch.epoch === m.epoch && ch.offset != null && m.offset <= ch.offset) return; // seen
    ch.epoch = m.epoch;
    ch.offset = m.offset;
    this._emit('message', {
      channel: m.channel,
      offset: m.offset,
      epoch: m.epoch,
      from: m.from,
      data: m.data,
      ts: m.ts,
    });
  }

  /**
   * Subscribes, and keeps the channel subscribed across reconnects.
   * @param {string} channel
   * @param {{since?: number, epoch?: string, joinLeave?: 'diff'|'each'|'off'}} [options]
   *   replay what came after `since`; how presence changes arrive
   * @returns {Promise<{offset: number, epoch: string, recovered: boolean}>}
   */
  subscribe(channel, { since, epoch, joinLeave } = {}) {
    let ch = this._channels.get(channel);
    if (!ch) {
      ch = { epoch: null, offset: null, gen: 0, waiters: [], joinLeave: null };
      this._channels.set(channel, ch);
    }
    if (joinLeave != null) ch.joinLeave = joinLeave;
    if (since != null) {
      ch.offset = since;
      ch.epoch = epoch ?? ch.epoch;
    }
    if (!this._wanted) return Promise.reject(new GatewayError('offline', 'not connected'));
    const promise = new Promise((resolve, reject) => ch.waiters.push({ resolve, reject }));
    if (this.state === 'live') {
      ch.gen = 0;
      this._subscribeNow(channel, this._gen);
    }
    // Otherwise the (re)connection subscribes it before going live.
    return promise;
  }

  /** Unsubscribes; the channel is no longer re-subscribed after reconnects. */
  async unsubscribe(channel) {
    const ch = this._channels.get(channel);
    this._channels.delete(channel);
    if (ch) this._rejectWaiters(ch, new GatewayError('not_subscribed', 'unsubscribed'));
    if (this.state !== 'live') return;
    try {
      await this._call('unsubscribe', { channel }, this.options.requestTimeout);
    } catch (error) {
      if (error.code !== 'not_subscribed' && error.code !== 'disconnected') throw error;
    }
  }

  /**
   * Publishes, retrying over reconnects with one idempotency key until acknowledged or
   * `timeout` ms have passed.
   * @param {string} channel @param {any} data
   * @param {{idem?: string, timeout?: number}} [opts]
   * @returns {Promise<{offset: number}>}
   */
  async publish(channel, data, { idem = randomId(), timeout = this.options.publishTimeout } = {}) {
    const deadline = Date.now() + timeout;
    // Whether any attempt may have published it: the error given up with says so.
    let maybe = false;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new GatewayError('timeout', 'not published in time', maybe);
      try {
        return await this.request('publish', { channel, data, idem }, {
          timeout: Math.min(left, this.options.requestTimeout),
          liveTimeout: left,
        });
      } catch (error) {
        maybe ||= error.maybePublished === true || error.code === 'timeout' || error.code === 'disconnected';
        error.maybePublished = maybe;
        if (!RETRYABLE.has(error.code) || Date.now() >= deadline) throw error;
        if (error.code === 'rate_limited' || error.code === 'unavailable') {
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
    }
  }

  /** @returns {Promise<{messages: object[], offset: number, epoch: string}>} */
  history(channel, { since, limit } = {}, opts) {
    const fields = { channel };
    if (since != null) fields.since = since;
    if (limit != null) fields.limit = limit;
    return this.request('history', fields, opts);
  }

  /**
   * A page of members (every member when no `limit`, within one reply); `cursor` in the answer
   * means more follow: pass it back to read the next page.
   * @returns {Promise<{members: {user: string, name?: string, conns: number}[], cursor?: string}>}
   */
  presence(channel, { limit, cursor } = {}, opts) {
    const fields = { channel };
    if (limit != null) fields.limit = limit;
    if (cursor != null) fields.cursor = cursor;
    return this.request('presence', fields, opts);
  }

  /** @returns {Promise<{users: number, conns: number}>} */
  presenceStats(channel, opts) {
    return this.request('presence_stats', { channel }, opts);
  }

  ping(opts) {
    return this.request('ping', {}, opts);
  }

  /**
   * Calls a method of the app's backend (the gateway's rpc proxy); resolves with the
   * backend's answer, or rejects with a `GatewayError` (`rejected` with `backendCode` when
   * the backend refused, `unavailable` when it did not answer, `method_not_found` when the
   * gateway has no rpc proxy).
   * @returns {Promise<any>}
   */
  async rpc(method, data, opts) {
    const fields = data === undefined ? { method } : { method, data };
    const ok = await this.request('rpc', fields, opts);
    return ok.data;
  }
}
