//! The broker trait: what the node needs from the message path, and the contract every
//! implementation keeps.

use crate::{Payload, Publication};
use serde::Deserialize;
use std::sync::Arc;

/// Why a broker call failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backend cannot be reached, or refused the request; nothing was applied, and
    /// retrying later makes sense.
    #[error("message backend unavailable: {0}")]
    Unavailable(String),
    /// The request went to the backend and no answer came in time (the backend is frozen or
    /// slow, or the connection broke after the request was sent): it may still be applied.
    /// A publish retried with the same idempotency key is published once.
    #[error("message backend did not answer; the request may still be applied: {0}")]
    OutcomeUnknown(String),
    /// The channel's idempotency table holds as many keys as it may (nothing was published;
    /// retrying after the dedup window frees keys makes sense).
    #[error("too many idempotency keys on this channel; retry later")]
    DedupFull,
    /// The backend answered something this code does not understand (a bug or a version
    /// mismatch between nodes).
    #[error("message backend error: {0}")]
    Backend(String),
}

impl BrokerError {
    /// Whether the request may have been applied all the same ([`BrokerError::OutcomeUnknown`]);
    /// every other error says it was not.
    pub fn maybe_applied(&self) -> bool {
        matches!(self, BrokerError::OutcomeUnknown(_))
    }
}

/// A publish to one channel.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Target channel (already validated and authorized).
    pub channel: Arc<str>,
    /// Publisher's user id.
    pub from: Arc<str>,
    /// Payload, already checked.
    pub data: Payload,
    /// Optional idempotency key: a repeat within the dedup window returns the first offset.
    pub idem: Option<String>,
    /// Whether the message goes to the archive (a namespace may opt out).
    pub archive: bool,
}

/// The result of an accepted publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Offset given to the message (the first publish's offset for a duplicate).
    pub offset: u64,
    /// Epoch of the channel: with `offset`, the name of the message.
    pub epoch: Arc<str>,
    /// True when `idem` matched an earlier publish and nothing new was delivered.
    pub duplicate: bool,
}

/// Which part of a channel's history to read.
#[derive(Debug, Clone, Copy)]
pub struct HistoryQuery {
    /// Exclusive lower bound; `None` reads the newest messages.
    pub since: Option<u64>,
    /// Exclusive upper bound (pages back through history and the archive); `None` for none.
    pub before: Option<u64>,
    /// At most this many messages. `0` reads only the channel's position (offset and epoch).
    pub limit: usize,
}

impl HistoryQuery {
    /// The same query, reading only the position when no offset can lie between the bounds
    /// (`since` at `u64::MAX`, `before` at 0, or `before` at most `since + 1`): a client's
    /// extreme offsets must not reach arithmetic or a backend's range syntax.
    pub fn clamped(self) -> HistoryQuery {
        let lowest = self.since.map_or(Some(1), |s| s.checked_add(1));
        let empty = match (lowest, self.before) {
            (None, _) => true,
            (Some(lowest), Some(before)) => before <= lowest,
            (Some(_), None) => false,
        };
        HistoryQuery {
            limit: if empty { 0 } else { self.limit },
            ..self
        }
    }
}

/// A slice of a channel's recent history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Messages, oldest first.
    pub publications: Vec<Arc<Publication>>,
    /// The channel's latest offset (0 when nothing was published in this epoch).
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: Arc<str>,
}

impl HistoryPage {
    /// Whether the page starts right after `since` (or holds nothing because `since` is the
    /// channel's top): nothing between `since` and the page is missing.
    pub fn covers(&self, since: u64) -> bool {
        match self.publications.first() {
            Some(first) => Some(first.offset) == since.checked_add(1),
            None => since >= self.offset,
        }
    }
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
        let covered = page.covers(since);
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

/// Ephemeral channel events that travel beside publications, in order with them, with no
/// offset and no history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// A user's first connection anywhere subscribed to a presence channel.
    Join {
        /// Channel.
        channel: Arc<str>,
        /// User id.
        user: Arc<str>,
    },
    /// A user's last connection anywhere left a presence channel.
    Leave {
        /// Channel.
        channel: Arc<str>,
        /// User id.
        user: Arc<str>,
    },
}

impl ControlEvent {
    /// The channel the event belongs to.
    pub fn channel(&self) -> &Arc<str> {
        match self {
            ControlEvent::Join { channel, .. } | ControlEvent::Leave { channel, .. } => channel,
        }
    }
}

/// A command for every node: each acts on its own connections or reports on them, and
/// answers with a [`CommandReply`]; [`Broker::command`] merges the answers of every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// Report the node's channels whose name contains `filter`, with their local subscriber
    /// counts (its busiest [`MAX_CHANNELS_PER_NODE`] at most). Personal channels are not
    /// listed.
    Channels {
        /// Substring a channel's name must contain (empty: every channel).
        filter: String,
    },
    /// Report the node's live counters.
    Stats,
    /// Close every connection of `user` with `disconnected`.
    Disconnect {
        /// User id.
        user: String,
        /// Whether the client should reconnect.
        reconnect: bool,
    },
    /// Unsubscribe every connection of `user` from `channel` (with an `unsubscribe` push).
    Unsubscribe {
        /// User id.
        user: String,
        /// Channel.
        channel: String,
    },
    /// Subscribe every connection of `user` to `channel`, as the server (a server-side
    /// subscription, with a `subscribe` push).
    Subscribe {
        /// User id.
        user: String,
        /// Channel.
        channel: String,
    },
    /// Hand `data` (commands, as its connection's encoding frames them) to the session
    /// held over HTTP-streaming or SSE with id `session` (Centrifugo's `/emulation`): the one
    /// node that holds it answers 1.
    Emulate {
        /// The session's id.
        session: String,
        /// The commands.
        data: bytes::Bytes,
    },
    /// Set when every connection of `user` expires (with a `refresh` push), or end them.
    Refresh {
        /// User id.
        user: String,
        /// The new expiry, Unix seconds; `None`: they no longer expire.
        expire_at: Option<u64>,
        /// End the connections now, as expired (`expire_at` is then not read).
        expired: bool,
    },
}

/// Most channels one node reports to [`NodeCommand::Channels`]: its busiest ones.
pub const MAX_CHANNELS_PER_NODE: usize = 10_000;

/// One node's live counters ([`NodeCommand::Stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStats {
    /// Node id.
    pub id: String,
    /// Open connections.
    pub connections: u64,
    /// Subscriptions held by its connections (personal channels included).
    pub subscriptions: u64,
    /// Channels with at least one local subscriber (personal channels not counted).
    pub channels: u64,
    /// Messages accepted by publishes made on this node, since start.
    pub published: u64,
    /// Messages written to this node's subscribers, since start.
    pub delivered: u64,
}

/// What a node answers to a [`NodeCommand`], and what the answers of every node merge into.
/// Between nodes it travels as JSON: `{"count": n}`, `{"channels": [[name, n], ...]}`,
/// `{"nodes": [{...}]}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandReply {
    /// Connections or subscriptions acted on ([`NodeCommand::Disconnect`],
    /// [`NodeCommand::Unsubscribe`]); merged by summing.
    Count(u64),
    /// Channels and their subscriber counts, busiest first; merged by summing per channel.
    Channels(Vec<(String, u64)>),
    /// Each node's counters; merged by listing them all, by id.
    Nodes(Vec<NodeStats>),
}

impl CommandReply {
    /// The count of a `Count` reply (0 for the others).
    pub fn count(&self) -> u64 {
        match self {
            CommandReply::Count(n) => *n,
            _ => 0,
        }
    }

    /// Merges every node's answer to `command` (an empty list: nothing answered).
    pub fn merge(command: &NodeCommand, replies: Vec<CommandReply>) -> CommandReply {
        match command {
            NodeCommand::Disconnect { .. }
            | NodeCommand::Unsubscribe { .. }
            | NodeCommand::Subscribe { .. }
            | NodeCommand::Emulate { .. }
            | NodeCommand::Refresh { .. } => {
                CommandReply::Count(replies.iter().map(CommandReply::count).sum())
            }
            NodeCommand::Channels { .. } => {
                let mut sums: std::collections::HashMap<String, u64> = Default::default();
                for reply in replies {
                    if let CommandReply::Channels(list) = reply {
                        for (channel, n) in list {
                            *sums.entry(channel).or_default() += n;
                        }
                    }
                }
                let mut list: Vec<(String, u64)> = sums.into_iter().collect();
                sort_channels(&mut list);
                CommandReply::Channels(list)
            }
            NodeCommand::Stats => {
                let mut nodes: Vec<NodeStats> = replies
                    .into_iter()
                    .flat_map(|r| match r {
                        CommandReply::Nodes(n) => n,
                        _ => Vec::new(),
                    })
                    .collect();
                nodes.sort_by(|a, b| a.id.cmp(&b.id));
                CommandReply::Nodes(nodes)
            }
        }
    }

    /// The reply as JSON (how nodes send it to each other).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a reply serializes")
    }

    /// Reads what [`to_json`](Self::to_json) wrote; `None` for anything else.
    pub fn from_json(value: &serde_json::Value) -> Option<CommandReply> {
        CommandReply::deserialize(value).ok()
    }
}

/// Busiest first, then by name.
pub fn sort_channels(list: &mut [(String, u64)]) {
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
}

/// How the broker's delivery to this node went, counted since start (all zero for a broker
/// that cannot lose live messages, such as the embedded one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Gaps found: a publication after a missing offset, or a channel behind its top.
    pub gaps: u64,
    /// Publications delivered from history to close gaps.
    pub healed: u64,
    /// Times this node's live feed fell behind and was dropped (then healed).
    pub lagged: u64,
    /// Channels whose subscribers were told to resubscribe (history no longer had a gap).
    pub lost: u64,
    /// Messages from the backend that could not be read.
    pub bad_envelopes: u64,
    /// Payload bytes this node holds in history now (0 when history lives elsewhere).
    pub history_bytes: u64,
    /// Partitions found on another backend server (a Redis Cluster slot move or failover)
    /// and subscribed again there.
    pub moved: u64,
}

/// Receives what the broker delivers to this node.
///
/// Contract: for each channel, publications arrive in offset order, each at most once per
/// epoch. Every method is called from a broker task or from inside a broker call and must
/// not block (it may take short locks; it never awaits).
pub trait Dispatcher: Send + Sync + 'static {
    /// Hands an accepted publication to local subscribers.
    fn dispatch(&self, publication: &Arc<Publication>);
    /// Hands a control event to local subscribers of its channel.
    fn dispatch_control(&self, event: &ControlEvent);
    /// Runs a node command on local connections; returns this node's answer.
    fn dispatch_command(&self, command: &NodeCommand) -> CommandReply;
    /// The broker lost publications of `channel` that it can no longer deliver (history no
    /// longer holds them, or the channel's epoch changed): local subscribers must recover
    /// on their own (they are unsubscribed and told to resubscribe with `since`).
    fn lost(&self, channel: &str);
}

/// The message path: offsets, history, dedup and delivery to every node.
///
/// # Contract
/// - **Offsets.** Each accepted publish gets the channel's next offset (1, 2, 3, ...) within
///   the channel's epoch, across all nodes. A new epoch (its offsets restart at 1) begins
///   only when the channel's state was lost (expiry of an idle channel, a backend restart).
/// - **Atomicity.** Dedup check, offset, history append and hand-off to fan-out happen as one
///   step: a message is either in history and on its way to every subscribed node, or the
///   publish failed and nothing of it exists.
/// - **Idempotency.** A publish repeating an `idem` key within the dedup window returns the
///   first publish's offset with `duplicate: true` and delivers nothing. When the channel's
///   key table is full the publish fails with [`BrokerError::DedupFull`]; keys are never
///   forgotten early.
/// - **Interest.** After [`Broker::subscribe`] returns `Ok`, every publication accepted on the
///   channel afterwards, on any node, reaches this node's [`Dispatcher`] (live delivery is
///   at-most-once per node; a gap the broker notices is healed from history, and what history
///   no longer holds is reported with [`Dispatcher::lost`]). Calls for one channel come
///   serialised by the caller: subscribe once, unsubscribe once, in turn.
/// - **History as a barrier.** On a channel this node subscribes to, [`Broker::history`]
///   returns only once every publication up to the returned `offset` has been handed to the
///   dispatcher. A subscriber registered before the read therefore sees, after it, exactly
///   the publications with a greater offset: recovery joins history and the live stream
///   with no gap and no duplicate.
/// - **Reads create the position.** A history read of an unknown channel gives it an epoch
///   (offset 0) that later publishes keep, so a subscriber's epoch stays valid.
/// - **Failures.** A call that cannot reach the backend fails with
///   [`BrokerError::Unavailable`] within about a second; it never hangs. A publish sent to
///   the backend that got no answer in time fails with [`BrokerError::OutcomeUnknown`] (it
///   may be applied later); `Unavailable` from `publish` means it was not and will not be.
/// - **Archive.** With an archive, every accepted publication with `archive: true` reaches it
///   (asynchronously: never on the publish path; a full archive queue makes publish wait
///   briefly, then fail with `Unavailable`, and nothing accepted is dropped). History reads
///   continue into the archive where recent history ends ([`crate::archive::complete_page`]),
///   and a channel whose state was lost resumes its archived epoch and offset instead of
///   starting a new epoch.
#[async_trait::async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Accepts a message: assigns its offset, records it in history and hands it to fan-out.
    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError>;
    /// Reads recent history (see the contract: a barrier on subscribed channels). Any
    /// `since` and `before` are accepted: bounds that no offset lies between read only the
    /// position ([`HistoryQuery::clamped`]).
    async fn history(&self, channel: &str, query: HistoryQuery)
    -> Result<HistoryPage, BrokerError>;
    /// This node wants `channel`'s publications (its first local subscriber arrived).
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// This node no longer wants `channel`'s publications.
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// Sends a control event to every node's subscribers of its channel.
    async fn publish_control(&self, event: ControlEvent) -> Result<(), BrokerError>;
    /// Runs `command` on every live node; returns their answers merged
    /// ([`CommandReply::merge`]).
    async fn command(&self, command: NodeCommand) -> Result<CommandReply, BrokerError>;
    /// Whether the backend is reachable now (readiness).
    fn is_healthy(&self) -> bool {
        true
    }
    /// Delivery counters (gaps, healing, lag, losses).
    fn stats(&self) -> DeliveryStats {
        DeliveryStats::default()
    }
    /// The most messages one channel's history holds.
    fn history_capacity(&self) -> usize;
    /// The archive path's counters, when there is an archive.
    fn archive_stats(&self) -> Option<Arc<crate::archive::ArchiveStats>> {
        None
    }
    /// Waits until every accepted publication is in the archive, or `deadline`; returns how
    /// many are still pending (0 without an archive).
    async fn flush_archive(&self, _deadline: std::time::Instant) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::HistoryQuery;

    #[test]
    fn extreme_bounds_read_only_the_position() {
        let q = |since, before| {
            HistoryQuery {
                since,
                before,
                limit: 10,
            }
            .clamped()
            .limit
        };
        assert_eq!(q(Some(u64::MAX), None), 0);
        assert_eq!(q(None, Some(0)), 0);
        assert_eq!(q(None, Some(1)), 0);
        assert_eq!(q(Some(4), Some(5)), 0);
        assert_eq!(q(Some(4), Some(6)), 10);
        assert_eq!(q(None, Some(2)), 10);
        assert_eq!(q(Some(u64::MAX - 1), None), 10);
        assert_eq!(q(None, None), 10);
    }

    #[test]
    fn command_replies_merge_and_cross_nodes_as_json() {
        use super::{CommandReply, NodeCommand, NodeStats};
        let channels = NodeCommand::Channels {
            filter: String::new(),
        };
        let merged = CommandReply::merge(
            &channels,
            vec![
                CommandReply::Channels(vec![("a".into(), 2), ("b".into(), 5)]),
                CommandReply::Channels(vec![("a".into(), 4), ("c".into(), 1)]),
            ],
        );
        assert_eq!(
            merged,
            CommandReply::Channels(vec![("a".into(), 6), ("b".into(), 5), ("c".into(), 1)])
        );
        let disconnect = NodeCommand::Disconnect {
            user: "u".into(),
            reconnect: false,
        };
        let count = CommandReply::merge(
            &disconnect,
            vec![CommandReply::Count(2), CommandReply::Count(3)],
        );
        assert_eq!(count.count(), 5);
        let node = |id: &str| NodeStats {
            id: id.into(),
            connections: 1,
            subscriptions: 2,
            channels: 3,
            published: 4,
            delivered: u64::MAX,
        };
        let nodes = CommandReply::merge(
            &NodeCommand::Stats,
            vec![
                CommandReply::Nodes(vec![node("b")]),
                CommandReply::Nodes(vec![node("a")]),
            ],
        );
        assert_eq!(nodes, CommandReply::Nodes(vec![node("a"), node("b")]));
        for reply in [merged, count, nodes] {
            assert_eq!(CommandReply::from_json(&reply.to_json()), Some(reply));
        }
        assert_eq!(CommandReply::from_json(&serde_json::json!({"x": 1})), None);
        assert_eq!(
            CommandReply::from_json(&serde_json::json!({"channels": [["a"]]})),
            None
        );
    }
}
