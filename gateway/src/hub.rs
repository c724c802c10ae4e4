//! The node's connection map: channel → local subscribers and user → connections.
//!
//! Both maps are sharded (`DashMap`); each channel's subscriber list has its own lock, so
//! fan-out to one channel holds only that channel's read lock and does not stall connects,
//! disconnects or fan-out elsewhere. Nothing here is held across an `.await`.
//!
//! Personal channels (`user:<id>`) are not in the channel map: their subscribers are the
//! user's own connections, which the user map already lists, and a flag on each connection
//! says whether it is subscribed. Every connection has one, so this saves a channel entry
//! per connection.
//!
//! A channel's subscribers are keyed by connection id in insertion order (`IndexMap`):
//! fan-out walks a dense array, and unsubscribe is O(1) (a swap-remove), so a mass
//! disconnect from a big room is linear, not quadratic.
//!
//! Presence changes reach subscribers as each asked (see [`JoinLeave`]): `each` subscribers
//! get a `join`/`leave` push at once; for `diff` subscribers the changes are gathered per
//! channel and [`Hub::flush_presence`] pushes one `presence_diff` per channel per interval,
//! so a member of a big room pays one frame per interval however many join.

use crate::acl::{JoinLeave, PERSONAL_PREFIX};
use crate::conn::{Conn, Delivery, Request};
use crate::protocol::{
    CloseReason, Encoding, UnsubscribeReason, control_frame, presence_diff_frame,
};
use bytes::Bytes;
use dashmap::DashMap;
use fanout::{
    CommandReply, ControlEvent, Dispatcher, MAX_CHANNELS_PER_NODE, NodeCommand, NodeStats,
    Publication, sort_channels,
};
use indexmap::{IndexMap, IndexSet};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

struct Subscriber {
    conn: Arc<Conn>,
    join_leave: JoinLeave,
}

/// One channel's local subscribers, and how many asked for each kind of presence push.
#[derive(Default)]
struct Channel {
    subs: IndexMap<u64, Subscriber>,
    each: usize,
    diff: usize,
    /// Once a subscription with deltas is here: the last publication delivered, which the
    /// next one's delta is made from (see `crate::delta`).
    last: Option<Mutex<Option<Arc<Publication>>>>,
}

impl Channel {
    fn count(&mut self, mode: JoinLeave, add: bool) {
        let n = match mode {
            JoinLeave::Off => return,
            JoinLeave::Each => &mut self.each,
            JoinLeave::Diff => &mut self.diff,
        };
        if add {
            *n += 1;
        } else {
            *n -= 1;
        }
    }
}

type Subscribers = Arc<RwLock<Channel>>;

/// Presence changes of one channel not yet pushed to its `diff` subscribers: the net change
/// since the last push (a join then a leave of one user cancel out).
#[derive(Default)]
struct PresenceChanges {
    joins: IndexSet<Arc<str>>,
    leaves: IndexSet<Arc<str>>,
}

/// Sessions this node holds over HTTP-streaming or SSE (Centrifugo's emulation, see
/// `http::emulation`), by session id: where the commands POSTed for each go.
#[derive(Default)]
pub struct Streams {
    sessions: DashMap<Arc<str>, tokio::sync::mpsc::Sender<Bytes>>,
}

impl Streams {
    /// Registers session `id`, whose commands go to `tx`.
    pub fn insert(&self, id: Arc<str>, tx: tokio::sync::mpsc::Sender<Bytes>) {
        self.sessions.insert(id, tx);
    }

    /// Forgets session `id`.
    pub fn remove(&self, id: &str) {
        self.sessions.remove(id);
    }

    /// Where session `id`'s commands go, if the node holds it.
    pub fn sender(&self, id: &str) -> Option<tokio::sync::mpsc::Sender<Bytes>> {
        self.sessions.get(id).map(|s| s.value().clone())
    }

    /// Hands `data` to session `id` if the node holds it and it has room, without waiting
    /// (a command relayed from another node).
    fn try_deliver(&self, id: &str, data: Bytes) -> bool {
        self.sender(id).is_some_and(|tx| tx.try_send(data).is_ok())
    }
}

/// Too many connections for one user.
#[derive(Debug)]
pub struct UserLimitReached;

/// Local subscribers and connections of this node.
#[derive(Default)]
pub struct Hub {
    node_id: String,
    channels: DashMap<Arc<str>, Subscribers>,
    users: DashMap<Arc<str>, Vec<Arc<Conn>>>,
    connections: AtomicUsize,
    /// Subscriptions held (personal channels included), messages published on this node and
    /// written to its subscribers: what `NodeCommand::Stats` reports and, copied at each
    /// scrape, the Prometheus series.
    subscriptions: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    presence_changes: Mutex<HashMap<Arc<str>, PresenceChanges>>,
    /// Sessions over HTTP-streaming or SSE.
    pub streams: Streams,
}

impl Hub {
    /// An empty hub of node `node_id`.
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_owned(),
            ..Self::default()
        }
    }

    fn subscription_added(&self) {
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
    }

    fn subscription_removed(&self) {
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a message accepted by a publish made on this node.
    pub fn count_published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// This node's counters.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            id: self.node_id.clone(),
            connections: self.connection_count() as u64,
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
            channels: self.channels.len() as u64,
            published: self.published.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
        }
    }

    /// Channels whose name contains `filter` with their local subscriber counts, busiest
    /// first, at most `MAX_CHANNELS_PER_NODE` (personal channels are not listed).
    pub fn channels(&self, filter: &str) -> Vec<(String, u64)> {
        let mut list: Vec<(String, u64)> = self
            .channels
            .iter()
            .filter(|e| e.key().contains(filter))
            .map(|e| (e.key().to_string(), e.value().read().subs.len() as u64))
            .filter(|(_, n)| *n > 0)
            .collect();
        if list.len() > MAX_CHANNELS_PER_NODE {
            list.select_nth_unstable_by(MAX_CHANNELS_PER_NODE, |a, b| b.1.cmp(&a.1));
            list.truncate(MAX_CHANNELS_PER_NODE);
        }
        sort_channels(&mut list);
        list
    }

    /// Whether `channel` is `conn`'s own personal channel.
    fn own_personal(channel: &str, conn: &Conn) -> bool {
        channel
            .strip_prefix(PERSONAL_PREFIX)
            .is_some_and(|owner| owner == &*conn.user)
    }

    /// Adds `conn` to `channel`'s subscribers, hearing of presence changes as `join_leave`
    /// says (the node, not the hub, tracks whether the broker delivers the channel here).
    /// Subscribed already, it only changes `join_leave`.
    pub fn subscribe(&self, channel: &Arc<str>, conn: &Arc<Conn>, join_leave: JoinLeave) {
        if Self::own_personal(channel, conn) {
            if !conn.set_personal(true) {
                self.subscription_added();
            }
            return;
        }
        let entry = self.channels.entry(channel.clone()).or_default();
        let mut state = entry.write();
        let old = state.subs.insert(
            conn.id,
            Subscriber {
                conn: conn.clone(),
                join_leave,
            },
        );
        match old {
            Some(old) => state.count(old.join_leave, false),
            None => self.subscription_added(),
        }
        state.count(join_leave, true);
    }

    /// Keeps `channel`'s last publication from now on (while the node has subscribers there),
    /// for the deltas of subscriptions that asked for them. The personal channel has none.
    pub fn keep_last(&self, channel: &str) {
        if let Some(state) = self.channels.get(channel).map(|s| s.value().clone()) {
            let mut state = state.write();
            if state.last.is_none() {
                state.last = Some(Mutex::new(None));
            }
        }
    }

    /// Gives `channel` a last publication (one a subscribe reply carried) when it has none
    /// yet: the next publication's delta may start from it (it is used only if that one
    /// follows it; see `Delivery::with_previous`).
    pub fn seed_last(&self, channel: &str, publication: &Arc<Publication>) {
        if let Some(state) = self.channels.get(channel).map(|s| s.value().clone()) {
            let state = state.read();
            if let Some(last) = &state.last {
                last.lock().get_or_insert_with(|| publication.clone());
            }
        }
    }

    /// Removes `conn` from `channel`. Returns true when the node has no subscriber left there.
    pub fn unsubscribe(&self, channel: &str, conn: &Conn) -> bool {
        if Self::own_personal(channel, conn) {
            if !conn.set_personal(false) {
                return false;
            }
            self.subscription_removed();
            return self.subscriber_count(channel) == 0;
        }
        let mut removed = false;
        if let Some(entry) = self.channels.get(channel) {
            let mut state = entry.write();
            if let Some(old) = state.subs.swap_remove(&conn.id) {
                state.count(old.join_leave, false);
                removed = true;
                self.subscription_removed();
            }
        }
        removed
            && self
                .channels
                .remove_if(channel, |_, state| state.read().subs.is_empty())
                .is_some()
    }

    /// Local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.for_each_subscriber(channel, |_| {})
    }

    /// Calls `f` for every local subscriber of `channel`; returns how many there were.
    fn for_each_subscriber(&self, channel: &str, mut f: impl FnMut(&Arc<Conn>)) -> usize {
        if let Some(owner) = channel.strip_prefix(PERSONAL_PREFIX) {
            let Some(conns) = self.users.get(owner) else {
                return 0;
            };
            let mut n = 0;
            for conn in conns.iter().filter(|c| c.personal()) {
                f(conn);
                n += 1;
            }
            return n;
        }
        let Some(state) = self.channels.get(channel).map(|s| s.value().clone()) else {
            return 0;
        };
        let state = state.read();
        state.subs.values().for_each(|s| f(&s.conn));
        state.subs.len()
    }

    /// Pushes one `presence_diff` to every `diff` subscriber of each channel whose presence
    /// changed since the last call; a diff of more than `max_users` users says `overflow`
    /// instead of listing them.
    pub fn flush_presence(&self, max_users: usize) {
        let changes = std::mem::take(&mut *self.presence_changes.lock());
        for (channel, changes) in changes {
            if changes.joins.is_empty() && changes.leaves.is_empty() {
                continue;
            }
            let Some(state) = self.channels.get(&channel).map(|s| s.value().clone()) else {
                continue;
            };
            let state = state.read();
            let mut frames: [Option<Bytes>; Encoding::COUNT] = Default::default();
            for sub in state.subs.values() {
                if sub.join_leave != JoinLeave::Diff {
                    continue;
                }
                let encoding = sub.conn.encoding;
                let frame = frames[encoding.slot()]
                    .get_or_insert_with(|| {
                        presence_diff_frame(
                            encoding,
                            &channel,
                            changes.joins.iter().map(|u| &**u),
                            changes.leaves.iter().map(|u| &**u),
                            max_users,
                        )
                    })
                    .clone();
                // (Centrifugo's protocol may have nothing to say of a diff: no empty frame.)
                if !frame.is_empty() {
                    sub.conn.push_frame(frame);
                }
            }
        }
    }

    /// Notes a presence change for the channel's `diff` subscribers.
    fn note_presence_change(&self, event: &ControlEvent) {
        let mut all = self.presence_changes.lock();
        let changes = all.entry(event.channel().clone()).or_default();
        match event {
            ControlEvent::Join { user, .. } => {
                if !changes.leaves.swap_remove(user) {
                    changes.joins.insert(user.clone());
                }
            }
            ControlEvent::Leave { user, .. } => {
                if !changes.joins.swap_remove(user) {
                    changes.leaves.insert(user.clone());
                }
            }
        }
    }

    /// Registers a new connection of its user, refusing past `max_per_user`.
    pub fn add_connection(
        &self,
        conn: &Arc<Conn>,
        max_per_user: usize,
    ) -> Result<(), UserLimitReached> {
        let mut conns = self.users.entry(conn.user.clone()).or_default();
        if conns.len() >= max_per_user {
            return Err(UserLimitReached);
        }
        conns.push(conn.clone());
        self.connections.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Forgets a connection registered by [`Hub::add_connection`].
    pub fn remove_connection(&self, conn: &Conn) {
        let mut found = false;
        if let Some(mut conns) = self.users.get_mut(&conn.user)
            && let Some(i) = conns.iter().position(|c| c.id == conn.id)
        {
            conns.swap_remove(i);
            found = true;
        }
        self.users
            .remove_if(&conn.user, |_, conns| conns.is_empty());
        if found {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Connections registered on this node.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Asks every connection of `user` to close; returns how many.
    pub fn close_user(&self, user: &str, reason: CloseReason) -> usize {
        self.for_each_of_user(user, |conn| conn.close(reason))
    }

    /// Runs `f` on every connection of `user` here; how many there were.
    fn for_each_of_user(&self, user: &str, f: impl Fn(&Conn)) -> usize {
        let conns: Vec<Arc<Conn>> = self
            .users
            .get(user)
            .map(|c| c.value().clone())
            .unwrap_or_default();
        for conn in &conns {
            f(conn);
        }
        conns.len()
    }

    /// Asks every connection on the node to close.
    pub fn close_all(&self, reason: CloseReason) {
        let conns: Vec<Arc<Conn>> = self.users.iter().flat_map(|e| e.value().clone()).collect();
        for conn in conns {
            conn.close(reason);
        }
    }
}

impl Dispatcher for Hub {
    fn dispatch(&self, publication: &Arc<Publication>) {
        // Wrapped once for the node (frames cached there), and only when someone is here.
        let mut delivery: Option<Arc<Delivery>> = None;
        let channel = &publication.channel;
        let n = if channel.starts_with(PERSONAL_PREFIX) {
            self.for_each_subscriber(channel, |conn| {
                conn.deliver(delivery.get_or_insert_with(|| Delivery::new(publication.clone())))
            })
        } else {
            let Some(state) = self.channels.get(&**channel).map(|s| s.value().clone()) else {
                return;
            };
            let state = state.read();
            // A channel with deltas: this publication goes with the one before it. The
            // broker dispatches one channel's publications one at a time, in offset order.
            let mut prev = state
                .last
                .as_ref()
                .map(|last| last.lock().replace(publication.clone()));
            for sub in state.subs.values() {
                let delivery = delivery.get_or_insert_with(|| match prev.take() {
                    Some(prev) => Delivery::with_previous(publication.clone(), prev),
                    None => Delivery::new(publication.clone()),
                });
                sub.conn.deliver(delivery);
            }
            state.subs.len()
        };
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn dispatch_control(&self, event: &ControlEvent) {
        let Some(state) = self
            .channels
            .get(event.channel())
            .map(|s| s.value().clone())
        else {
            return;
        };
        let state = state.read();
        if state.diff > 0 {
            self.note_presence_change(event);
        }
        if state.each == 0 {
            return;
        }
        let mut encoded: [Option<Bytes>; Encoding::COUNT] = Default::default();
        for sub in state.subs.values() {
            if sub.join_leave == JoinLeave::Each {
                let conn = &sub.conn;
                let frame = encoded[conn.encoding.slot()]
                    .get_or_insert_with(|| control_frame(conn.encoding, event))
                    .clone();
                conn.push_frame(frame);
            }
        }
    }

    fn dispatch_command(&self, command: &NodeCommand) -> CommandReply {
        match command {
            NodeCommand::Channels { filter } => CommandReply::Channels(self.channels(filter)),
            NodeCommand::Stats => CommandReply::Nodes(vec![self.stats()]),
            NodeCommand::Disconnect { user, reconnect } => CommandReply::Count(self.close_user(
                user,
                CloseReason::Disconnected {
                    reconnect: *reconnect,
                },
            )
                as u64),
            NodeCommand::Unsubscribe { user, channel } => {
                let channel: Arc<str> = channel.as_str().into();
                let mut n = 0;
                self.for_each_subscriber(&channel, |conn| {
                    if *conn.user == **user {
                        conn.request_unsubscribe(channel.clone(), UnsubscribeReason::Server);
                        n += 1;
                    }
                });
                CommandReply::Count(n)
            }
            NodeCommand::Subscribe { user, channel } => {
                let channel: Arc<str> = channel.as_str().into();
                CommandReply::Count(self.for_each_of_user(user, |conn| {
                    conn.request(Request::Subscribe(channel.clone()))
                }) as u64)
            }
            NodeCommand::Refresh {
                user,
                expire_at,
                expired,
            } => CommandReply::Count(if *expired {
                self.close_user(user, CloseReason::TokenExpired)
            } else {
                self.for_each_of_user(user, |conn| conn.request(Request::Refresh(*expire_at)))
            } as u64),
            NodeCommand::Emulate { session, data } => {
                CommandReply::Count(u64::from(self.streams.try_deliver(session, data.clone())))
            }
        }
    }

    fn lost(&self, channel: &str) {
        let channel: Arc<str> = channel.into();
        let n = self.for_each_subscriber(&channel, |conn| {
            conn.request_unsubscribe(channel.clone(), UnsubscribeReason::InsufficientState)
        });
        if n > 0 {
            tracing::warn!(%channel, subscribers = n, "messages lost: subscribers told to resubscribe");
        }
    }
}
