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

use crate::acl::PERSONAL_PREFIX;
use crate::conn::{Conn, Delivery};
use crate::metrics::metrics;
use crate::protocol::{CloseReason, UnsubscribeReason, control_frame};
use bytes::Bytes;
use dashmap::DashMap;
use fanout::{ControlEvent, Dispatcher, NodeCommand, Publication};
use parking_lot::RwLock;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

type Subscribers = Arc<RwLock<Vec<Arc<Conn>>>>;

/// Too many connections for one user.
#[derive(Debug)]
pub struct UserLimitReached;

/// Local subscribers and connections of this node.
#[derive(Default)]
pub struct Hub {
    channels: DashMap<Arc<str>, Subscribers>,
    users: DashMap<Arc<str>, Vec<Arc<Conn>>>,
    connections: AtomicUsize,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `channel` is `conn`'s own personal channel.
    fn own_personal(channel: &str, conn: &Conn) -> bool {
        channel
            .strip_prefix(PERSONAL_PREFIX)
            .is_some_and(|owner| owner == &*conn.user)
    }

    /// Adds `conn` to `channel`'s subscribers (the node, not the hub, tracks whether the
    /// broker delivers the channel here).
    pub fn subscribe(&self, channel: &Arc<str>, conn: &Arc<Conn>) {
        if Self::own_personal(channel, conn) {
            if !conn.set_personal(true) {
                metrics().subscriptions.increment(1.0);
            }
            return;
        }
        let entry = self.channels.entry(channel.clone()).or_default();
        entry.write().push(conn.clone());
        metrics().subscriptions.increment(1.0);
    }

    /// Removes `conn` from `channel`. Returns true when the node has no subscriber left there.
    pub fn unsubscribe(&self, channel: &str, conn: &Conn) -> bool {
        if Self::own_personal(channel, conn) {
            if !conn.set_personal(false) {
                return false;
            }
            metrics().subscriptions.decrement(1.0);
            return self.subscriber_count(channel) == 0;
        }
        let mut removed = false;
        if let Some(entry) = self.channels.get(channel) {
            let mut subs = entry.write();
            if let Some(i) = subs.iter().position(|c| c.id == conn.id) {
                subs.swap_remove(i);
                removed = true;
                metrics().subscriptions.decrement(1.0);
            }
        }
        removed
            && self
                .channels
                .remove_if(channel, |_, subs| subs.read().is_empty())
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
        let Some(subs) = self.channels.get(channel).map(|s| s.value().clone()) else {
            return 0;
        };
        let subs = subs.read();
        subs.iter().for_each(f);
        subs.len()
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
        metrics().connections.increment(1.0);
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
            metrics().connections.decrement(1.0);
        }
    }

    /// Connections registered on this node.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Asks every connection of `user` to close; returns how many.
    pub fn close_user(&self, user: &str, reason: CloseReason) -> usize {
        let conns: Vec<Arc<Conn>> = self
            .users
            .get(user)
            .map(|c| c.value().clone())
            .unwrap_or_default();
        for conn in &conns {
            conn.close(reason);
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
        let n = self.for_each_subscriber(&publication.channel, |conn| {
            conn.deliver(delivery.get_or_insert_with(|| Delivery::new(publication.clone())))
        });
        metrics().delivered.increment(n as u64);
    }

    fn dispatch_control(&self, event: &ControlEvent) {
        let mut encoded: [Option<Bytes>; 2] = [None, None];
        self.for_each_subscriber(event.channel(), |conn| {
            let frame = encoded[conn.encoding.slot()]
                .get_or_insert_with(|| control_frame(conn.encoding, event))
                .clone();
            conn.push_frame(frame);
        });
    }

    fn dispatch_command(&self, command: &NodeCommand) -> u64 {
        match command {
            NodeCommand::Disconnect { user, reconnect } => self.close_user(
                user,
                CloseReason::Disconnected {
                    reconnect: *reconnect,
                },
            ) as u64,
            NodeCommand::Unsubscribe { user, channel } => {
                let channel: Arc<str> = channel.as_str().into();
                let mut n = 0;
                self.for_each_subscriber(&channel, |conn| {
                    if *conn.user == **user {
                        conn.request_unsubscribe(channel.clone(), UnsubscribeReason::Server);
                        n += 1;
                    }
                });
                n
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
