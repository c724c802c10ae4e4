// The admin page: reads the cluster through the same /api/ endpoints backends use, signed in
// with the API key. The key is kept in this module's memory only (never in the URL, web
// storage or a cookie): a reload signs out.

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const CHART_POINTS = 150; // 5 minutes at one sample per 2 s

let apiKey = null;
let timer = null;
let previous = null; // {at, nodes: Map(id -> {published, delivered})}
const samples = []; // {connections, delivered}
let selected = null; // channel shown in the detail panel

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

/** Calls the API with the key; JSON in and out. */
async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: {
      Authorization: `Bearer ${apiKey}`,
      ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  let json = null;
  try {
    json = await res.json();
  } catch {
    /* an empty or non-JSON body */
  }
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}

/** Creates an element with text and attributes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

const fmt = (n) => (n === undefined || n === null ? '–' : Number(n).toLocaleString('en-US'));
const rate = (n) => (n === undefined ? '–' : n.toLocaleString('en-US', { maximumFractionDigits: 1 }));

// ---------------------------------------------------------------------------------------------
// Signing in and out

$('login').addEventListener('submit', async (event) => {
  event.preventDefault();
  const key = $('api-key').value.trim();
  $('api-key').value = '';
  $('login-error').textContent = '';
  apiKey = key;
  try {
    await api('GET', 'api/nodes');
  } catch (err) {
    apiKey = null;
    $('login-error').textContent =
      err.status === 401 ? 'That key is not this cluster’s API key.' : `Cannot reach the API: ${err.message}`;
    return;
  }
  $('login').hidden = true;
  $('dashboard').hidden = false;
  $('signed-in').hidden = false;
  await poll();
  timer = setInterval(poll, POLL_MS);
});

$('sign-out').addEventListener('click', () => {
  apiKey = null;
  clearInterval(timer);
  previous = null;
  previousProxies = null;
  samples.length = 0;
  selected = null;
  $('dashboard').hidden = true;
  $('signed-in').hidden = true;
  $('channel-detail').hidden = true;
  $('login').hidden = false;
  $('api-key').focus();
});

// ---------------------------------------------------------------------------------------------
// Polling: nodes, totals, the chart, channels, the selected channel

async function poll() {
  if (!apiKey) return;
  try {
    const [{ nodes }, channels, proxies] = await Promise.all([
      api('GET', 'api/nodes'),
      api('GET', `api/channels?limit=50&filter=${encodeURIComponent($('channel-filter').value.trim())}`),
      api('GET', 'api/proxies'),
    ]);
    renderNodes(nodes);
    renderChannels(channels);
    renderProxies(proxies);
    if (selected) await renderDetail(selected);
    $('poll-error').textContent = '';
  } catch (err) {
    if (err.status === 401) {
      $('sign-out').click();
      $('login-error').textContent = 'The API key was refused: sign in again.';
      return;
    }
    $('poll-error').textContent = `Last refresh failed: ${err.message}`;
  }
}

let previousProxies = null; // {at, calls: Map(proxy -> calls)}
let proxyRates = new Map(); // proxy -> calls per second

/**
 * The backend proxies of the node this page talks to (calls/s, failures, breaker), and its
 * webhook sender (requests as calls; its state: ok, retrying, or standby while another node
 * sends; dead letters with the last failure).
 */
function renderProxies({ node, proxies, webhook }) {
  const now = performance.now();
  if (webhook) {
    proxies = [...proxies, {
      proxy: 'webhook',
      calls: webhook.requests,
      failures: webhook.failures,
      breaker: webhook.state,
      last_error: [webhook.dead_letters ? `${fmt(webhook.dead_letters)} dead letters` : '', webhook.last_error ?? '']
        .filter(Boolean).join('; ') || null,
    }];
  }
  if (!previousProxies || now - previousProxies.at >= 1500) {
    if (previousProxies) {
      const secs = (now - previousProxies.at) / 1000;
      proxyRates = new Map(proxies.map((p) => {
        const before = previousProxies.calls.get(p.proxy) ?? p.calls;
        return [p.proxy, Math.max(0, p.calls - before) / secs];
      }));
    }
    previousProxies = { at: now, calls: new Map(proxies.map((p) => [p.proxy, p.calls])) };
  }
  $('proxies-node').textContent = node;
  $('proxies-none').hidden = proxies.length > 0;
  // (`breaker` is the webhook sender's state in its row.)
  $('proxy-rows').replaceChildren(...proxies.map((p) => el('tr', { 'data-proxy': p.proxy },
    el('td', {}, el('code', { text: p.proxy })),
    el('td', { text: rate(proxyRates.get(p.proxy)) }),
    el('td', { text: fmt(p.calls) }),
    el('td', { text: fmt(p.failures) }),
    el('td', { class: `breaker ${p.breaker}`, 'data-testid': `breaker-${p.proxy}`, text: p.breaker.replace('_', '-') }),
    el('td', { class: 'dim', text: p.last_error ?? '' }),
  )));
}

let rates = new Map(); // node id -> {published, delivered} per second, over >= 1.5 s

function renderNodes(nodes) {
  const now = performance.now();
  // Rates over at least 1.5 s (a refresh right after an action comes sooner): until then
  // the last ones stand.
  const fresh = !previous || now - previous.at >= 1500;
  if (fresh && previous) {
    rates = new Map();
    const secs = (now - previous.at) / 1000;
    for (const n of nodes) {
      const before = previous.nodes.get(n.id);
      if (before && n.published !== undefined && secs > 0) {
        rates.set(n.id, {
          published: Math.max(0, n.published - before.published) / secs,
          delivered: Math.max(0, n.delivered - before.delivered) / secs,
        });
      }
    }
  }
  if (fresh) previous = { at: now, nodes: new Map(nodes.map((n) => [n.id, n])) };

  const rows = nodes.map((n) => {
    const r = rates.get(n.id);
    const conns = n.capacity ? `${fmt(n.connections)} / ${fmt(n.capacity)}` : fmt(n.connections);
    return el('tr', { 'data-testid': 'node-row', 'data-node': n.id },
      el('td', { text: n.id }), el('td', { text: n.url, class: 'dim' }), el('td', { text: conns }),
      el('td', { text: fmt(n.subscriptions) }), el('td', { text: fmt(n.channels) }),
      el('td', { text: rate(r?.published) }), el('td', { text: rate(r?.delivered) }));
  });
  $('node-rows').replaceChildren(...rows);

  const sum = (f) => nodes.reduce((s, n) => s + (f(n) ?? 0), 0);
  const connections = sum((n) => n.connections);
  $('total-nodes').textContent = fmt(nodes.length);
  $('total-connections').textContent = fmt(connections);
  $('total-subscriptions').textContent = fmt(sum((n) => n.subscriptions));
  if (fresh && rates.size) {
    const published = [...rates.values()].reduce((s, r) => s + r.published, 0);
    const delivered = [...rates.values()].reduce((s, r) => s + r.delivered, 0);
    $('total-published').textContent = rate(published);
    $('total-delivered').textContent = rate(delivered);
    samples.push({ connections, delivered });
    if (samples.length > CHART_POINTS) samples.shift();
    renderChart();
  }
}

/** Two lines, each scaled to its own maximum, drawn as SVG polylines. */
function renderChart() {
  const svg = $('chart');
  const W = 600;
  const H = 160;
  const pad = 6;
  const step = (W - 2 * pad) / (CHART_POINTS - 1);
  const offset = CHART_POINTS - samples.length;
  const line = (values, cls) => {
    const max = Math.max(1, ...values);
    const points = values
      .map((v, i) => `${(pad + (offset + i) * step).toFixed(1)},${(H - pad - (v / max) * (H - 2 * pad)).toFixed(1)}`)
      .join(' ');
    const node = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    node.setAttribute('points', points);
    node.setAttribute('class', cls);
    node.setAttribute('data-testid', `chart-${cls}`);
    return { max, node };
  };
  const conn = line(samples.map((s) => s.connections), 'conn');
  const deliv = line(samples.map((s) => s.delivered), 'deliv');
  svg.replaceChildren(conn.node, deliv.node);
  $('chart-scale').textContent = ` — top of the chart: ${fmt(conn.max)} connections, ${rate(deliv.max)} deliveries/s`;
}

function renderChannels({ channels, total }) {
  const rows = channels.map((c) => {
    const link = el('a', { href: '#', 'data-testid': 'channel-link', text: c.channel });
    link.addEventListener('click', (event) => {
      event.preventDefault();
      selected = c.channel;
      $('publish-channel').value = c.channel;
      renderDetail(c.channel).catch((err) => {
        $('poll-error').textContent = err.message;
      });
    });
    return el('tr', { 'data-testid': 'channel-row', 'data-channel': c.channel },
      el('td', {}, link), el('td', { text: fmt(c.subscribers), 'data-testid': 'channel-subscribers' }));
  });
  $('channel-rows').replaceChildren(...rows);
  $('channel-total').textContent =
    total > channels.length ? `${fmt(channels.length)} of ${fmt(total)} channels shown` : `${fmt(total)} channels`;
}

$('channel-filter').addEventListener('input', () => poll());

async function renderDetail(channel) {
  const path = encodeURIComponent(channel);
  const [history, presence, stats] = await Promise.all([
    api('GET', `api/history/${path}?limit=20`),
    api('GET', `api/presence/${path}?limit=100`).catch((err) => ({ error: err })),
    api('GET', `api/presence/${path}/stats`).catch((err) => ({ error: err })),
  ]);
  if (selected !== channel) return;
  $('channel-detail').hidden = false;
  $('detail-name').textContent = channel;
  if (presence.error) {
    $('detail-stats').textContent = `(${presence.error.message})`;
    $('detail-members').replaceChildren();
  } else {
    const plural = (n, word) => `${fmt(n)} ${word}${n === 1 ? '' : 's'}`;
    $('detail-stats').textContent = stats.error ? '' : `${plural(stats.users, 'user')}, ${plural(stats.conns, 'connection')}`;
    $('detail-members').replaceChildren(
      ...presence.members.map((m) => el('li', { 'data-testid': 'detail-member', text: m.name ? `${m.user} (${m.name})` : m.user })),
    );
  }
  $('detail-history').replaceChildren(
    ...history.messages.map((m) =>
      el('li', { 'data-testid': 'detail-message' },
        el('span', { class: 'dim', text: `#${m.offset} ${new Date(m.ts).toLocaleTimeString()} ${m.from}: ` }),
        el('code', { text: JSON.stringify(m.data) }))),
  );
}

// ---------------------------------------------------------------------------------------------
// Actions

$('publish').addEventListener('submit', async (event) => {
  event.preventDefault();
  const result = $('publish-result');
  result.className = '';
  let data;
  try {
    data = JSON.parse($('publish-data').value);
  } catch (err) {
    result.className = 'error';
    result.textContent = `Not JSON: ${err.message}`;
    return;
  }
  const channel = $('publish-channel').value.trim();
  try {
    const ok = await api('POST', 'api/publish', { channel, data });
    result.textContent = `Published to ${channel} at offset ${ok.offset}.`;
    await poll();
  } catch (err) {
    result.className = 'error';
    result.textContent = `Not published: ${err.message}`;
  }
});

$('disconnect').addEventListener('submit', async (event) => {
  event.preventDefault();
  const result = $('disconnect-result');
  result.className = '';
  const user = $('disconnect-user').value.trim();
  try {
    const ok = await api('POST', 'api/disconnect', { user, reconnect: $('disconnect-reconnect').checked });
    result.textContent = `Disconnected ${ok.disconnected} connection${ok.disconnected === 1 ? '' : 's'} of ${user}.`;
    await poll();
  } catch (err) {
    result.className = 'error';
    result.textContent = `Not disconnected: ${err.message}`;
  }
});
