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

/// What the change feed records (the webhooks' events, in Pusher's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedKind {
    /// The channel's first connection anywhere.
    ChannelOccupied,
    /// The channel's last connection anywhere went.
    ChannelVacated,
    /// A user's first connection on the channel anywhere.
    MemberAdded,
    /// A user's last connection on the channel anywhere went.
    MemberRemoved,
    /// A client published on the channel.
    ClientEvent,
}

impl FeedKind {
    /// Every kind.
    pub const ALL: [FeedKind; 5] = [
        FeedKind::ChannelOccupied,
        FeedKind::ChannelVacated,
        FeedKind::MemberAdded,
        FeedKind::MemberRemoved,
        FeedKind::ClientEvent,
    ];

    /// The event's name.
    pub fn name(self) -> &'static str {
        match self {
            FeedKind::ChannelOccupied => "channel_occupied",
            FeedKind::ChannelVacated => "channel_vacated",
            FeedKind::MemberAdded => "member_added",
            FeedKind::MemberRemoved => "member_removed",
            FeedKind::ClientEvent => "client_event",
        }
    }

    /// The kind of a name.
    pub fn parse(name: &str) -> Option<FeedKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One event of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    /// Unique in the cluster: the receiver's idempotency key.
    pub id: String,
    /// What happened.
    pub kind: FeedKind,
    /// Where.
    pub channel: String,
    /// Who (member and client events).
    pub user: Option<String>,
    /// What a client published (client events), JSON text.
    pub data: Option<String>,
    /// When it was recorded, Unix milliseconds.
    pub time_ms: u64,
    /// Where it is kept (the partition), for the acknowledgement.
    pub partition: usize,
}

/// Which channels the change feed records (the gateway's namespaces with webhooks).
pub type FeedFilter = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

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

    // The change feed (the webhooks' source). When a feed filter is set, every transition
    // above on a channel it accepts is recorded as it happens, atomically with it: once per
    // cluster, in the order of the transitions per channel. One node at a time leads the
    // feed and sends what it reads; an event stays in the feed until acknowledged.

    /// Records that `user` published `data` (JSON text) on `channel`.
    async fn feed_client_event(
        &self,
        channel: &str,
        user: &str,
        data: &str,
    ) -> Result<(), PresenceError>;
    /// Takes or renews the feed's lead for `lease`; whether this node holds it.
    async fn feed_lead(&self, lease: std::time::Duration) -> Result<bool, PresenceError>;
    /// Up to `max` events not acknowledged yet: first those read before and not acknowledged
    /// (a previous leader's), then new ones; each channel's in order.
    async fn feed_read(&self, max: usize) -> Result<Vec<FeedEvent>, PresenceError>;
    /// Removes `events` from the feed.
    async fn feed_ack(&self, events: &[FeedEvent]) -> Result<(), PresenceError>;
}
