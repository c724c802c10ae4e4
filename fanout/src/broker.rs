//! The broker trait: what sessions and the HTTP API need from the message path.

use crate::Publication;
use std::sync::Arc;

/// Why a broker call failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backend cannot take the call now; retrying later makes sense.
    #[error("message backend unavailable: {0}")]
    Unavailable(String),
}

/// A publish to one channel.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Target channel (already validated and authorized).
    pub channel: Arc<str>,
    /// Publisher's user id.
    pub from: Arc<str>,
    /// Payload.
    pub data: serde_json::Value,
    /// Optional idempotency key: a repeat within the dedup window returns the first offset.
    pub idem: Option<String>,
}

/// The result of an accepted publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Offset given to the message (the first publish's offset for a duplicate).
    pub offset: u64,
    /// Epoch of the channel.
    pub epoch: Arc<str>,
    /// True when `idem` matched an earlier publish and nothing new was delivered.
    pub duplicate: bool,
}

/// Which part of a channel's history to read.
#[derive(Debug, Clone, Copy)]
pub struct HistoryQuery {
    /// Exclusive lower bound; `None` reads the newest messages.
    pub since: Option<u64>,
    /// At most this many messages.
    pub limit: usize,
}

/// A slice of a channel's recent history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Messages, oldest first.
    pub publications: Vec<Arc<Publication>>,
    /// The channel's latest offset (0 when nothing was ever published in this epoch).
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: Arc<str>,
}

/// What a subscribe with `since` can give back.
#[derive(Debug, Clone)]
pub struct RecoveryOutcome {
    /// Missed messages still held, oldest first.
    pub publications: Vec<Arc<Publication>>,
    /// The channel's latest offset.
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: Arc<str>,
    /// True when nothing was missing: same epoch and history still covered `since + 1`.
    pub recovered: bool,
}

impl RecoveryOutcome {
    /// Judges a history page read from `since` (exclusive) against the client's `epoch`.
    pub fn from_page(page: HistoryPage, since: u64, client_epoch: Option<&str>) -> Self {
        let same_epoch = client_epoch.is_none_or(|e| e == &*page.epoch);
        if !same_epoch || since > page.offset {
            return Self {
                publications: Vec::new(),
                offset: page.offset,
                epoch: page.epoch,
                recovered: false,
            };
        }
        let covered = match page.publications.first() {
            Some(first) => first.offset == since + 1,
            None => page.offset == since,
        };
        let complete = page
            .publications
            .last()
            .is_none_or(|last| last.offset == page.offset);
        Self {
            recovered: covered && complete,
            offset: page.offset,
            epoch: page.epoch,
            publications: page.publications,
        }
    }
}

/// Ephemeral channel events that travel beside publications, with no offset or history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// A user's first connection subscribed to a presence channel.
    Join {
        /// Channel.
        channel: Arc<str>,
        /// User id.
        user: Arc<str>,
    },
    /// A user's last connection left a presence channel.
    Leave {
        /// Channel.
        channel: Arc<str>,
        /// User id.
        user: Arc<str>,
    },
}

/// Receives what the broker delivers to this node, in offset order per channel.
pub trait Dispatcher: Send + Sync + 'static {
    /// Hands an accepted publication to local subscribers. Must not block.
    fn dispatch(&self, publication: &Arc<Publication>);
    /// Hands a control event to local subscribers. Must not block.
    fn dispatch_control(&self, event: &ControlEvent);
    /// Whether this node has subscribers on `channel` (a broker keeps such channels' state).
    fn has_subscribers(&self, channel: &str) -> bool;
}

/// The message path: offsets, history, dedup and delivery.
#[async_trait::async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Accepts a message: assigns its offset, records it in history and hands it to fan-out.
    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError>;
    /// Reads recent history.
    async fn history(&self, channel: &str, query: HistoryQuery)
    -> Result<HistoryPage, BrokerError>;
    /// Tells the broker this node has local subscribers on `channel` (first one).
    async fn subscribe_node(&self, channel: &str) -> Result<(), BrokerError>;
    /// Tells the broker this node has no local subscribers left on `channel`.
    async fn unsubscribe_node(&self, channel: &str) -> Result<(), BrokerError>;
    /// Sends a control event to every node's subscribers of its channel.
    async fn publish_control(&self, event: ControlEvent) -> Result<(), BrokerError>;
    /// The most messages one channel's history holds.
    fn history_capacity(&self) -> usize;
}
