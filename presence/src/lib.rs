//! Who is online and where.
//!
//! [`Presence`] tracks, per channel, which users are subscribed and with how many
//! connections, so that the gateway can push `join` when a user's first connection arrives and
//! `leave` when the last one goes. [`NodeRegistry`] lists the live gateway nodes behind sticky
//! routing. The in-process implementations serve one node; Redis ones (with TTL heartbeats)
//! implement the same traits for clustered mode.

mod local;
mod redis;
mod registry;

pub use local::LocalPresence;
pub use redis::{RedisPresence, RedisRegistry};
pub use registry::{LocalRegistry, NodeInfo, NodeRegistry, RegistryError};

/// A user present on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// User id.
    pub user: String,
    /// Display name from the user's token, if any.
    pub name: Option<String>,
    /// Connections of this user subscribed to the channel.
    pub conns: u32,
}

/// How many are present on a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Distinct users.
    pub users: u64,
    /// Their connections, on every node.
    pub conns: u64,
}

/// Why a presence call failed.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The backend cannot be reached or did not answer in time.
    #[error("presence backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered something this code does not understand.
    #[error("presence backend error: {0}")]
    Backend(String),
}

/// A presence transition that a heartbeat found: a dead node's user left, or this node's
/// user is back after Redis lost (or other nodes reaped) its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The user is present again (push `join`).
    Joined {
        /// Channel.
        channel: String,
        /// User id.
        user: String,
    },
    /// The user's last entry went with a dead node (push `leave`).
    Left {
        /// Channel.
        channel: String,
        /// User id.
        user: String,
    },
}

/// Per-channel presence, counted per (node, user).
///
/// # Contract
/// - Entries belong to the node that added them: each node counts its own connections of a
///   user on a channel.
/// - [`add`](Presence::add) and [`remove`](Presence::remove) are atomic across the cluster and
///   report the user's transitions exactly once each: `add` is true only for the user's first
///   connection on the channel on any node, `remove` only for the last one anywhere.
/// - A node calls [`heartbeat`](Presence::heartbeat) every few seconds. It keeps the node's
///   entries alive; entries of a node whose heartbeats stopped (a crash) expire after about
///   three heartbeat intervals, and the live node whose heartbeat removes them gets back the
///   removals that were user transitions, so that `leave` is pushed once for each. A node
///   whose own entries were lost (the backend restarted empty, or the node was taken for
///   dead) puts them back at its next heartbeat and gets back the users that thereby
///   returned, so that `join` is pushed for each.
/// - `members` merges every live node's entries.
#[async_trait::async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records one more connection of `user` on `channel` on this node; true when it is the
    /// user's first anywhere.
    async fn add(
        &self,
        channel: &str,
        user: &str,
        name: Option<&str>,
    ) -> Result<bool, PresenceError>;
    /// Records one connection fewer on this node; true when it was the user's last anywhere.
    async fn remove(&self, channel: &str, user: &str) -> Result<bool, PresenceError>;
    /// At most `limit` (at least 1) users present on `channel` whose id sorts after
    /// `after`, in user-id order: a page. Paging on with `after` = the last user returned
    /// lists every user present throughout exactly once, however the set changes meanwhile.
    async fn members_page(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, PresenceError>;
    /// Users and connections present on `channel`, without listing them: O(1).
    async fn stats(&self, channel: &str) -> Result<Stats, PresenceError>;
    /// Keeps this node's entries alive (putting back lost ones) and expires those of dead
    /// nodes; returns the transitions to announce.
    async fn heartbeat(&self) -> Result<Vec<Change>, PresenceError>;
}
