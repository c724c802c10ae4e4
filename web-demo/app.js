// The demo chat page: rooms, presence and direct messages on top of client.js.
// User content is only ever put into the page with textContent / attributes, never as HTML.

import { GatewayClient, randomId } from './client.js';

const DEFAULT_ROOM = 'room:lobby';
const HISTORY_LIMIT = 50;
const GROUP_GAP_MS = 5 * 60 * 1000;
const params = new URLSearchParams(location.search);
// Token lifetime in seconds (`?ttl=` for trying out token refresh; dev tokens only).
const TOKEN_TTL = Math.min(86_400, Math.max(5, Number(params.get('ttl')) || 3600));
const SESSION_KEY = 'gateway-demo:name';

const $ = (id) => document.getElementById(id);
const ui = {
  loginView: $('login-view'),
  loginForm: $('login-form'),
  loginName: $('login-name'),
  loginError: $('login-error'),
  chatView: $('chat-view'),
  sidebar: $('sidebar'),
  sidebarToggle: $('sidebar-toggle'),
  toggleBadge: $('toggle-badge'),
  backdrop: $('backdrop'),
  status: $('connection-status'),
  statusText: $('status-text'),
  retryNow: $('retry-now'),
  banner: $('connection-banner'),
  bannerText: $('banner-text'),
  meAvatar: $('me-avatar'),
  meName: $('me-name'),
  signOut: $('sign-out'),
  roomList: $('room-list'),
  joinForm: $('join-form'),
  roomInput: $('room-input'),
  joinError: $('join-error'),
  dmList: $('dm-list'),
  dmEmpty: $('dm-empty'),
  memberList: $('member-list'),
  membersRoom: $('members-room'),
  title: $('conversation-title'),
  sub: $('conversation-sub'),
  leaveRoom: $('leave-room'),
  messages: $('message-list'),
  composer: $('composer'),
  composerInput: $('composer-input'),
  composerLabel: $('composer-label'),
};

/** Creates an element; `props` are attributes (`class`, `data-*`, `aria-*`...) and `text`. */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === 'text') node.textContent = value;
    else if (key === 'onclick') node.addEventListener('click', value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

// ---------------------------------------------------------------------------------------------
// State

/**
 * A conversation: a room (`room:<name>`) or a direct-message thread with one peer.
 * Room entries are keyed by offset (pending ones by client id); DM entries mix messages
 * received on our `user:` channel and the ones we sent to the peer's.
 */
function newConversation(kind, id) {
  return {
    kind,
    id, // room: channel name; dm: peer user id
    entries: new Map(),
    pending: new Map(), // rooms: client id -> entry not yet acknowledged
    epoch: null,
    gapAt: null, // rooms: offset before which messages could not be recovered
    unread: 0,
    members: new Map(),
    loaded: false,
    loading: false,
    error: null,
  };
}

const app = {
  me: null, // {user, name}
  client: null,
  rooms: new Map(),
  dms: new Map(),
  active: null,
  lastRoom: null, // whose members the members panel shows
  names: new Map(),
  presenceTimers: new Map(),
  status: { state: 'connecting' },
};

const roomLabel = (channel) => `#${channel.slice('room:'.length)}`;
const displayName = (user) => app.names.get(user) || user;
const myChannel = () => `user:${app.me.user}`;

function textOf(data) {
  if (typeof data === 'string') return data;
  if (data && typeof data.text === 'string') return data.text;
  return JSON.stringify(data);
}

function rememberName(user, name) {
  if (typeof name === 'string' && name.trim() && app.names.get(user) !== name.trim()) {
    app.names.set(user, name.trim());
    return true;
  }
  return false;
}

/** A user id from a display name: the characters a channel name may hold. */
function userIdFor(name) {
  const id = name
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/[^a-z0-9_.@-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 60);
  return id || `user-${randomId(4)}`;
}

// ---------------------------------------------------------------------------------------------
// Login

async function fetchToken(user, name) {
  let res;
  try {
    res = await fetch('/dev/token', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user, name, ttl_secs: TOKEN_TTL }),
    });
  } catch {
    throw new Error('The server cannot be reached.');
  }
  if (res.status === 404) throw new Error('This node does not hand out tokens (start it with --dev).');
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body?.error?.message || `Token request failed (HTTP ${res.status}).`);
  return { token: body.token, exp: body.exp };
}

/** Where to connect: the user's home node from `/v1/route`, else this origin's `/ws`. */
async function resolveSocketUrl(token) {
  const sameOrigin = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 10_000);
  try {
    const res = await fetch('/v1/route', {
      headers: { Authorization: `Bearer ${token}` },
      signal: abort.signal,
      cache: 'no-store',
    });
    if (!res.ok) return sameOrigin;
    const { url } = await res.json();
    return typeof url === 'string' && /^wss?:\/\//.test(url) ? url : sameOrigin;
  } catch {
    return sameOrigin;
  } finally {
    clearTimeout(timer);
  }
}

function showLoginError(message) {
  ui.loginError.textContent = message;
  ui.loginError.hidden = !message;
}

async function login(name) {
  const user = userIdFor(name);
  const button = ui.loginForm.querySelector('button[type=submit]');
  button.disabled = true;
  showLoginError('');
  try {
    const token = await fetchToken(user, name);
    sessionStorage.setItem(SESSION_KEY, name);
    startChat({ user, name }, token);
  } catch (err) {
    showLoginError(err.message);
    ui.loginName.focus();
  } finally {
    button.disabled = false;
  }
}

ui.loginForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const name = ui.loginName.value.trim();
  if (!name) {
    showLoginError('Please enter a name.');
    ui.loginName.focus();
    return;
  }
  login(name);
});

// ---------------------------------------------------------------------------------------------
// Chat

function startChat(me, token) {
  app.me = me;
  app.names.set(me.user, me.name);
  ui.meName.textContent = me.name;
  setAvatar(ui.meAvatar, me.user, me.name);
  ui.loginView.hidden = true;
  ui.chatView.hidden = false;

  const client = new GatewayClient({
    url: resolveSocketUrl,
    getToken: () => fetchToken(me.user, me.name),
    token,
  });
  app.client = client;
  client.on('state', onState);
  client.on('message', onMessage);
  client.on('presence_diff', onPresenceDiff);
  client.on('recovery', ({ channel, recovered }) => {
    if (!recovered) reloadAfterGap(channel);
  });
  client.on('error', ({ error, context }) => console.warn(`gateway ${context}:`, error?.message || error));
  client.connect().catch(() => {}); // the state event shows why

  for (const channel of savedRooms()) addRoom(channel);
  if (app.rooms.size === 0) addRoom(DEFAULT_ROOM);
  activate(app.rooms.get(DEFAULT_ROOM) || app.rooms.values().next().value);
  updateLayout();
  ui.composerInput.focus();
}

function stopChat() {
  app.client?.close();
  app.client = null;
  app.rooms.clear();
  app.dms.clear();
  app.active = app.lastRoom = null;
  app.names.clear();
  for (const t of app.presenceTimers.values()) clearTimeout(t);
  app.presenceTimers.clear();
  ui.messages.replaceChildren();
  sessionStorage.removeItem(SESSION_KEY);
  ui.chatView.hidden = true;
  ui.loginView.hidden = false;
  document.title = 'Gateway chat';
  ui.loginName.focus();
}

ui.signOut.addEventListener('click', stopChat);
$('skip-link').addEventListener('click', (event) => {
  event.preventDefault();
  ui.composerInput.focus();
});
ui.retryNow.addEventListener('click', () => app.client?.reconnectNow());

// ---- rooms ----

const roomsKey = () => `gateway-demo:rooms:${app.me.user}`;

function savedRooms() {
  try {
    const rooms = JSON.parse(localStorage.getItem(roomsKey()) || '[]');
    return Array.isArray(rooms) ? rooms.filter((r) => typeof r === 'string' && r.startsWith('room:')) : [];
  } catch {
    return [];
  }
}

function saveRooms() {
  localStorage.setItem(roomsKey(), JSON.stringify([...app.rooms.keys()]));
}

function addRoom(channel) {
  let conv = app.rooms.get(channel);
  if (!conv) {
    conv = newConversation('room', channel);
    app.rooms.set(channel, conv);
    saveRooms();
    renderSidebar();
  }
  loadRoom(conv);
  return conv;
}

/** Loads the last messages, then subscribes from there (no gap), then asks who is here. */
async function loadRoom(conv) {
  const client = app.client;
  if (conv.loaded || conv.loading || client?.state !== 'live') return; // retried when live
  conv.loading = true;
  conv.error = null;
  renderConversationIfActive(conv);
  try {
    const page = await client.history(conv.id, { limit: HISTORY_LIMIT });
    if (app.rooms.get(conv.id) !== conv) return;
    for (const m of page.messages) addRoomMessage(conv, m, { fromHistory: true });
    if (conv.epoch == null) conv.epoch = page.epoch;
    await client.subscribe(conv.id, { since: page.offset, epoch: page.epoch, joinLeave: 'diff' });
    conv.loaded = true;
    refreshPresence(conv);
  } catch (err) {
    if (app.client !== client || app.rooms.get(conv.id) !== conv) return;
    if (['forbidden', 'bad_request'].includes(err.code)) {
      conv.error = `Cannot join ${roomLabel(conv.id)}: ${err.message}`;
    }
    // Otherwise (timeout, disconnected): tried again when the connection is live.
  } finally {
    conv.loading = false;
    renderConversationIfActive(conv);
  }
}

/** After `recovered: false`: reload what the server still holds. */
async function reloadAfterGap(channel) {
  const client = app.client;
  try {
    const page = await client.history(channel, { limit: HISTORY_LIMIT });
    // What was not seen before counts as unread, as if it had arrived live.
    if (channel === myChannel()) {
      for (const m of page.messages) addDirectMessage({ ...m, channel });
      return;
    }
    const conv = app.rooms.get(channel);
    if (!conv) return;
    const hadEntries = conv.entries.size > 0;
    if (conv.epoch !== page.epoch) resetEntries(conv, page.epoch);
    const known = Math.max(0, ...conv.entries.keys());
    const first = page.messages[0]?.offset;
    // Say so where the messages the server no longer holds would be.
    if (hadEntries && first != null && first > known + 1) conv.gapAt = first;
    for (const m of page.messages) addRoomMessage(conv, m);
    refreshPresence(conv);
    renderConversationIfActive(conv);
  } catch (err) {
    console.warn('reload failed:', err.message);
  }
}

function resetEntries(conv, epoch) {
  conv.entries.clear();
  conv.gapAt = null;
  conv.epoch = epoch;
  if (app.active === conv) ui.messages.replaceChildren();
}

async function leaveRoom(conv) {
  app.rooms.delete(conv.id);
  saveRooms();
  app.client?.unsubscribe(conv.id).catch(() => {});
  if (app.lastRoom === conv) app.lastRoom = null;
  if (app.active === conv) {
    const next = app.rooms.get(DEFAULT_ROOM) || app.rooms.values().next().value || null;
    activate(next);
  } else {
    renderSidebar();
  }
}

function normalizeRoom(input) {
  const name = input.trim().replace(/^#/, '').replace(/^room:/, '').replace(/\s+/g, '-');
  if (!name) return { error: 'Type a room name.' };
  if (!/^[A-Za-z0-9_.@-]{1,123}$/.test(name)) {
    return { error: 'Use letters, digits and . _ - @ only.' };
  }
  return { channel: `room:${name}` };
}

ui.joinForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const { channel, error } = normalizeRoom(ui.roomInput.value);
  ui.joinError.textContent = error || '';
  ui.joinError.hidden = !error;
  if (error) {
    ui.roomInput.focus();
    return;
  }
  ui.roomInput.value = '';
  activate(addRoom(channel));
  closeSidebar();
  ui.composerInput.focus();
});

ui.leaveRoom.addEventListener('click', () => {
  if (app.active?.kind === 'room') leaveRoom(app.active);
  ui.composerInput.focus();
});

// ---- presence ----

async function refreshPresence(conv) {
  try {
    const { members } = await app.client.presence(conv.id);
    if (app.rooms.get(conv.id) !== conv) return;
    conv.members = new Map(members.map((m) => [m.user, m]));
    let renamed = false;
    for (const m of members) renamed = rememberName(m.user, m.name) || renamed;
    renderSidebar();
    if (renamed) renderConversationIfActive(app.active);
  } catch (err) {
    console.warn('presence failed:', err.message);
  }
}

/** One `presence_diff`: who joined and left the room since the last one. */
function onPresenceDiff({ channel, joins, leaves, overflow }) {
  const conv = app.rooms.get(channel);
  if (!conv) return;
  if (overflow) {
    // Too many changed at once to list: read the members again.
    refreshPresence(conv);
    return;
  }
  let unnamed = false;
  for (const user of joins) {
    if (!conv.members.has(user)) conv.members.set(user, { user, name: app.names.get(user), conns: 1 });
    if (!app.names.has(user)) unnamed = true;
  }
  for (const user of leaves) conv.members.delete(user);
  if (unnamed) {
    // A diff carries no display names: ask again (once, shortly after).
    clearTimeout(app.presenceTimers.get(channel));
    app.presenceTimers.set(channel, setTimeout(() => refreshPresence(conv), 300));
  }
  if (app.lastRoom === conv) renderMembers();
}

// ---- incoming messages ----

function onMessage(m) {
  if (m.channel === myChannel()) addDirectMessage(m);
  else {
    const conv = app.rooms.get(m.channel);
    if (conv) addRoomMessage(conv, m);
  }
}

function addRoomMessage(conv, m, { fromHistory = false } = {}) {
  if (conv.epoch != null && m.epoch !== conv.epoch) resetEntries(conv, m.epoch);
  conv.epoch = m.epoch;
  rememberName(m.from, m.data?.name);
  const own = m.from === app.me.user;
  // Our own message coming back: it is the pending entry with the same client id.
  const cid = own && typeof m.data?.cid === 'string' ? m.data.cid : null;
  let entry = conv.entries.get(m.offset);
  if (!entry && cid && conv.pending.has(cid)) {
    entry = conv.pending.get(cid);
    conv.pending.delete(cid);
    conv.entries.set(m.offset, entry);
  }
  const isNew = !entry;
  if (!entry) {
    entry = { key: `o:${m.offset}` };
    conv.entries.set(m.offset, entry);
  }
  Object.assign(entry, {
    offset: m.offset,
    from: m.from,
    text: textOf(m.data),
    ts: m.ts,
    own,
    // Our own message stays "pending" until the publish reply (the ack) says it was accepted.
    state: entry.state === 'pending' ? 'pending' : 'sent',
  });
  if (isNew && !own && !fromHistory && app.active !== conv) {
    conv.unread++;
    renderSidebar();
  }
  renderConversationIfActive(conv);
}

function dmConversation(peer) {
  let conv = app.dms.get(peer);
  if (!conv) {
    conv = newConversation('dm', peer);
    app.dms.set(peer, conv);
  }
  return conv;
}

function addDirectMessage(m, { fromHistory = false } = {}) {
  const own = m.from === app.me.user;
  const peer = own ? (typeof m.data?.to === 'string' ? m.data.to : app.me.user) : m.from;
  rememberName(m.from, m.data?.name);
  const conv = dmConversation(peer);
  const key = `r:${m.epoch}:${m.offset}`;
  const cid = own && typeof m.data?.cid === 'string' ? `s:${m.data.cid}` : null;
  if (conv.entries.has(key) || (cid && conv.entries.has(cid))) return;
  conv.entries.set(key, {
    key,
    from: m.from,
    text: textOf(m.data),
    ts: m.ts,
    own,
    state: 'sent',
  });
  if (!own && !fromHistory && app.active !== conv) conv.unread++;
  renderSidebar();
  renderConversationIfActive(conv);
}

// ---- sending ----

async function send(conv, entry, data) {
  const channel = conv.kind === 'room' ? conv.id : `user:${conv.id}`;
  entry.state = 'pending';
  renderConversationIfActive(conv);
  try {
    const { offset } = await app.client.publish(channel, data, { idem: entry.cid });
    if (conv.kind === 'room') {
      if (conv.pending.get(entry.cid) === entry) {
        conv.pending.delete(entry.cid);
        if (!conv.entries.has(offset)) {
          entry.offset = offset;
          conv.entries.set(offset, entry);
        }
      }
    }
    entry.state = 'sent';
  } catch (err) {
    entry.state = 'failed';
    entry.error = err.code || 'error';
  }
  renderConversationIfActive(conv);
}

function sendText(text) {
  const conv = app.active;
  if (!conv || !app.client) return;
  const cid = randomId(8);
  const entry = {
    key: `c:${cid}`,
    cid,
    from: app.me.user,
    text,
    ts: Date.now(),
    own: true,
    state: 'pending',
  };
  let data;
  if (conv.kind === 'room') {
    data = { text, name: app.me.name, cid };
    conv.pending.set(cid, entry);
  } else {
    // The recipient files it under `from`; `to` lets our own copies be filed too.
    data = { text, name: app.me.name, to: conv.id, cid };
    entry.key = `s:${cid}`;
    conv.entries.set(entry.key, entry);
  }
  entry.retry = () => send(conv, entry, data);
  stickToBottom = true;
  send(conv, entry, data);
}

ui.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.composerInput.value.trim();
  if (!text || !app.active) return;
  ui.composerInput.value = '';
  autosize();
  sendText(text);
});

ui.composerInput.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

function autosize() {
  const input = ui.composerInput;
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}
ui.composerInput.addEventListener('input', autosize);

// ---------------------------------------------------------------------------------------------
// Rendering

function activate(conv) {
  app.active = conv;
  if (conv) {
    conv.unread = 0;
    if (conv.kind === 'room') app.lastRoom = conv;
  }
  stickToBottom = true;
  renderSidebar();
  renderConversation();
}

const AVATAR_COLORS = ['#6366f1', '#0ea5e9', '#10b981', '#f59e0b', '#ef4444', '#ec4899', '#8b5cf6', '#14b8a6'];

function setAvatar(node, user, name) {
  let hash = 0;
  for (const ch of user) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  node.style.background = AVATAR_COLORS[hash % AVATAR_COLORS.length];
  node.textContent = (name || user).trim().charAt(0).toUpperCase() || '?';
}

function badge(count) {
  if (!count) return null;
  return h('span', {
    class: 'badge',
    'data-testid': 'unread-badge',
    'aria-label': `${count} unread`,
    text: count > 99 ? '99+' : String(count),
  });
}

function renderSidebar() {
  if (!app.me) return;
  // Rooms
  ui.roomList.replaceChildren(
    ...[...app.rooms.values()].map((conv) => {
      const current = app.active === conv;
      return h('li', {},
        h('button', {
          type: 'button',
          class: `nav-item${current ? ' active' : ''}${conv.unread ? ' unread' : ''}`,
          'data-testid': `room-${conv.id.slice(5)}`,
          'aria-current': current ? 'page' : null,
          onclick: () => { activate(conv); closeSidebar(); ui.composerInput.focus(); },
        },
        h('span', { class: 'hash', 'aria-hidden': 'true', text: '#' }),
        h('span', { class: 'nav-label', text: conv.id.slice(5) }),
        badge(conv.unread)));
    }),
  );
  // Direct messages
  const dms = [...app.dms.values()].sort((a, b) => displayName(a.id).localeCompare(displayName(b.id)));
  ui.dmEmpty.hidden = dms.length > 0;
  ui.dmList.replaceChildren(
    ...dms.map((conv) => {
      const current = app.active === conv;
      const online = [...app.rooms.values()].some((r) => r.members.has(conv.id));
      const avatar = h('span', { class: 'avatar tiny', 'aria-hidden': 'true' });
      setAvatar(avatar, conv.id, displayName(conv.id));
      return h('li', {},
        h('button', {
          type: 'button',
          class: `nav-item${current ? ' active' : ''}${conv.unread ? ' unread' : ''}`,
          'data-testid': `dm-${conv.id}`,
          'aria-current': current ? 'page' : null,
          'aria-label': `Direct messages with ${displayName(conv.id)}${online ? ' (online)' : ''}`,
          onclick: () => { activate(conv); closeSidebar(); ui.composerInput.focus(); },
        },
        avatar,
        h('span', { class: 'nav-label', text: displayName(conv.id) }),
        h('span', { class: `presence-dot${online ? ' online' : ''}`, 'aria-hidden': 'true' }),
        badge(conv.unread)));
    }),
  );
  renderMembers();
  // Unread total: in the title, and on the menu button at phone width.
  const total = [...app.rooms.values(), ...app.dms.values()].reduce((n, c) => n + c.unread, 0);
  document.title = total ? `(${total}) Gateway chat` : 'Gateway chat';
  ui.toggleBadge.textContent = total > 99 ? '99+' : String(total);
  ui.toggleBadge.hidden = !total;
}

function roomSubtitle(conv) {
  if (conv.error) return conv.error;
  if (!conv.loaded) return 'Loading…';
  return `${conv.members.size} online`;
}

function renderMembers() {
  if (app.active?.kind === 'room') ui.sub.textContent = roomSubtitle(app.active);
  const conv = app.lastRoom && app.rooms.get(app.lastRoom.id) === app.lastRoom ? app.lastRoom : null;
  ui.membersRoom.textContent = conv ? `· ${roomLabel(conv.id)} · ${conv.members.size} online` : '';
  if (!conv) {
    ui.memberList.replaceChildren(h('li', { class: 'side-empty', text: 'Join a room to see who is here.' }));
    return;
  }
  const members = [...conv.members.values()].sort((a, b) => {
    if (a.user === app.me.user) return -1;
    if (b.user === app.me.user) return 1;
    return displayName(a.user).localeCompare(displayName(b.user));
  });
  ui.memberList.replaceChildren(
    ...members.map((m) => {
      const name = m.name || displayName(m.user);
      const me = m.user === app.me.user;
      const avatar = h('span', { class: 'avatar small', 'aria-hidden': 'true' });
      setAvatar(avatar, m.user, name);
      const body = [
        h('span', { class: 'avatar-wrap' }, avatar, h('span', { class: 'presence-dot online', 'aria-hidden': 'true' })),
        h('span', { class: 'member-name', text: name }),
        me ? h('span', { class: 'you', text: '(you)' }) : h('span', { class: 'member-action', 'aria-hidden': 'true', text: 'Message' }),
      ];
      if (me) return h('li', { class: 'member', 'data-testid': `member-${m.user}` }, ...body);
      return h('li', { 'data-testid': `member-${m.user}` },
        h('button', {
          type: 'button',
          class: 'member',
          'aria-label': `Message ${name}`,
          onclick: () => { activate(dmConversation(m.user)); closeSidebar(); ui.composerInput.focus(); },
        }, ...body));
    }),
  );
}

let stickToBottom = true;
ui.messages.addEventListener('scroll', () => {
  const el = ui.messages;
  stickToBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
});

// Keep the newest message in view when the pane gets smaller (banner, composer growing).
new ResizeObserver(() => {
  if (stickToBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
}).observe(ui.messages);

function renderConversationIfActive(conv) {
  if (conv && app.active === conv) renderConversation();
}

function orderedEntries(conv) {
  if (conv.kind === 'room') {
    const sent = [...conv.entries.values()].sort((a, b) => a.offset - b.offset);
    const pending = [...conv.pending.values()].sort((a, b) => a.ts - b.ts);
    return sent.concat(pending);
  }
  return [...conv.entries.values()].sort((a, b) => a.ts - b.ts || (a.key < b.key ? -1 : 1));
}

function renderConversation() {
  const conv = app.active;
  if (!conv) {
    ui.title.textContent = 'No room';
    ui.sub.textContent = 'Join or create a room in the sidebar.';
    ui.leaveRoom.hidden = true;
    ui.composer.hidden = true;
    ui.messages.replaceChildren(h('p', { class: 'empty', text: 'You are not in any room.' }));
    return;
  }
  ui.composer.hidden = false;
  if (conv.kind === 'room') {
    ui.title.textContent = roomLabel(conv.id);
    ui.sub.textContent = roomSubtitle(conv);
    ui.leaveRoom.hidden = false;
    ui.leaveRoom.setAttribute('aria-label', `Leave ${roomLabel(conv.id)}`);
    ui.composerInput.placeholder = `Message ${roomLabel(conv.id)}`;
    ui.composerLabel.textContent = `Message ${roomLabel(conv.id)}`;
  } else {
    const name = displayName(conv.id);
    ui.title.textContent = `@${name}`;
    ui.sub.textContent = `Direct messages with ${name}`;
    ui.leaveRoom.hidden = true;
    ui.composerInput.placeholder = `Message ${name}`;
    ui.composerLabel.textContent = `Message ${name}`;
  }
  const entries = orderedEntries(conv);
  const lastOwn = entries.findLast((e) => e.own);
  const nodes = [];
  let prev = null;
  for (const entry of entries) {
    if (conv.gapAt != null && entry.offset === conv.gapAt) {
      conv.gapNode ??= h('p', {
        class: 'gap-note',
        role: 'note',
        'data-testid': 'gap-note',
        text: 'Some messages from while you were away are no longer available.',
      });
      nodes.push(conv.gapNode);
      prev = null;
    }
    const node = messageNode(entry);
    const continued = prev && prev.from === entry.from && entry.ts - prev.ts < GROUP_GAP_MS;
    node.classList.toggle('continued', !!continued);
    node.classList.toggle('last-own', entry === lastOwn);
    nodes.push(node);
    prev = entry;
  }
  if (nodes.length === 0) {
    const text = conv.kind === 'room' && !conv.loaded && !conv.error
      ? 'Loading messages…'
      : conv.kind === 'room' ? 'No messages yet. Say hello!' : `This is the start of your conversation with ${displayName(conv.id)}.`;
    nodes.push(h('p', { class: 'empty', 'data-testid': 'empty-state', text }));
  }
  const stick = stickToBottom;
  reconcile(ui.messages, nodes);
  if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
}

/** Puts `nodes` into `parent` in order, moving only what is out of place (so a screen reader
 * announces new messages, not the whole list again). */
function reconcile(parent, nodes) {
  let i = 0;
  for (; i < nodes.length; i++) {
    const current = parent.children[i];
    if (current !== nodes[i]) parent.insertBefore(nodes[i], current || null);
  }
  while (parent.children.length > nodes.length) parent.lastElementChild.remove();
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

/** The element of one message (built once, then updated). Text goes in with textContent. */
function messageNode(entry) {
  if (!entry.el) {
    const avatar = h('span', { class: 'avatar', 'aria-hidden': 'true' });
    const author = h('span', { class: 'author', 'data-testid': 'message-author' });
    const time = h('time', { class: 'time', 'data-testid': 'message-time' });
    const state = h('span', { class: 'msg-state', 'data-testid': 'message-state' });
    const text = h('p', { class: 'text', 'data-testid': 'message-text' });
    const retry = h('button', { type: 'button', class: 'link-btn', 'data-testid': 'retry-send', text: 'Retry', hidden: true });
    retry.addEventListener('click', () => entry.retry?.());
    entry.el = h('div', { class: 'msg', 'data-testid': 'message' },
      avatar,
      h('div', { class: 'bubble-wrap' },
        h('div', { class: 'meta' }, author, time),
        h('div', { class: 'bubble' }, text),
        h('div', { class: 'status-line' }, state, retry)));
    entry.parts = { avatar, author, time, state, text, retry };
  }
  const { avatar, author, time, state, text, retry } = entry.parts;
  const name = entry.own ? 'You' : displayName(entry.from);
  entry.el.classList.toggle('own', entry.own);
  entry.el.dataset.state = entry.state;
  entry.el.dataset.own = String(entry.own);
  if (entry.offset != null) entry.el.dataset.offset = String(entry.offset);
  setAvatar(avatar, entry.from, displayName(entry.from));
  author.textContent = name;
  text.textContent = entry.text;
  const date = new Date(entry.ts);
  time.dateTime = date.toISOString();
  time.textContent = timeFormat.format(date);
  time.title = dateTimeFormat.format(date);
  if (entry.own) {
    state.textContent = entry.state === 'pending' ? 'Sending…' : entry.state === 'failed' ? 'Not sent' : 'Sent';
  } else {
    state.textContent = '';
  }
  retry.hidden = entry.state !== 'failed';
  return entry.el;
}

// ---- connection state ----

const REASONS = {
  closed: 'signed out',
  normal: 'the connection was closed',
  disconnected: 'disconnected by the server',
  policy: 'the server refused this client (policy)',
  too_large: 'a message was too large',
  internal: 'server error',
  shutdown: 'the server is restarting',
  token_expired: 'the session expired',
  slow_consumer: 'the connection could not keep up',
  rate_limited: 'too many messages',
  heartbeat_timeout: 'the connection went quiet',
  connection_lost: 'the connection was lost',
  connect_failed: 'the server cannot be reached',
};

function onState(s) {
  const previous = app.status.state;
  app.status = s;
  let text;
  switch (s.state) {
    case 'live':
      text = 'Live';
      break;
    case 'connecting':
      text = 'Connecting…';
      break;
    case 'reconnecting':
      text = s.waitingForNetwork ? 'Waiting for the network…'
        : s.retryIn > 0 ? `Reconnecting in ${s.retryIn} s` : 'Reconnecting…';
      break;
    default:
      text = 'Offline';
  }
  ui.status.dataset.state = s.state;
  ui.chatView.dataset.conn = s.state;
  ui.statusText.textContent = text;
  // The banner says why, and offers to try now.
  const why = REASONS[s.reason] || s.reason || 'not connected';
  if (s.state === 'offline') {
    ui.bannerText.textContent = `You are offline: ${why}.`;
  } else if (s.state === 'reconnecting') {
    ui.bannerText.textContent = `Connection lost: ${why}. Messages you send now go out once it is back.`;
  }
  ui.banner.hidden = !(s.state === 'offline' || s.state === 'reconnecting');
  ui.banner.dataset.state = s.state;
  ui.retryNow.hidden = !(s.state === 'offline' || (s.state === 'reconnecting' && s.retryIn > 0));
  ui.retryNow.textContent = s.state === 'offline' ? 'Reconnect' : 'Retry now';
  if (s.state === 'live') onLive(previous);
}

/** Every time the connection becomes live: load what is not loaded, re-read presence. */
function onLive(previous) {
  for (const conv of app.rooms.values()) {
    if (!conv.loaded) loadRoom(conv);
    else if (previous !== 'live') refreshPresence(conv);
  }
}

// ---- layout (phone width: the sidebar is a drawer) ----

const narrow = matchMedia('(max-width: 760px)');

function updateLayout() {
  const open = ui.sidebar.classList.contains('open');
  const drawer = narrow.matches;
  ui.sidebar.inert = drawer && !open;
  ui.backdrop.hidden = !(drawer && open);
  ui.sidebarToggle.setAttribute('aria-expanded', String(!drawer || open));
}

function openSidebar() {
  ui.sidebar.classList.add('open');
  updateLayout();
  ui.sidebar.querySelector('button, input')?.focus();
}

function closeSidebar() {
  if (!ui.sidebar.classList.contains('open')) return;
  ui.sidebar.classList.remove('open');
  updateLayout();
}

ui.sidebarToggle.addEventListener('click', () => {
  if (ui.sidebar.classList.contains('open')) {
    closeSidebar();
    ui.sidebarToggle.focus();
  } else {
    openSidebar();
  }
});
ui.backdrop.addEventListener('click', closeSidebar);
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && ui.sidebar.classList.contains('open')) {
    closeSidebar();
    ui.sidebarToggle.focus();
  }
});
narrow.addEventListener('change', updateLayout);

// ---------------------------------------------------------------------------------------------
// Start

const remembered = sessionStorage.getItem(SESSION_KEY);
if (remembered) {
  ui.loginName.value = remembered;
  login(remembered);
} else {
  ui.loginName.focus();
}
