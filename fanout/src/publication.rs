//! One accepted message, shared by every subscriber and the history.

use bytes::Bytes;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Encoded forms of a publication, one slot per wire encoding, filled on first use so that a
/// message is encoded at most once per encoding however many subscribers receive it.
#[derive(Debug, Default)]
pub struct FrameCache {
    slots: [OnceLock<Bytes>; 2],
}

impl FrameCache {
    /// The encoded frame in `slot` (0 or 1), computed by `encode` the first time.
    pub fn get_or_encode(&self, slot: usize, encode: impl FnOnce() -> Bytes) -> Bytes {
        self.slots[slot].get_or_init(encode).clone()
    }
}

/// A message accepted on a channel: its place in the channel (offset within epoch), its
/// author, payload and acceptance time.
#[derive(Debug)]
pub struct Publication {
    /// The channel it was published to.
    pub channel: Arc<str>,
    /// Position in the channel, starting at 1, contiguous within one epoch.
    pub offset: u64,
    /// Generation of the channel's history that `offset` belongs to.
    pub epoch: Arc<str>,
    /// User id of the publisher (`"server"` for the HTTP API).
    pub from: Arc<str>,
    /// The payload, any JSON-compatible value.
    pub data: serde_json::Value,
    /// Acceptance time, Unix milliseconds.
    pub ts: u64,
    /// Acceptance time on this node's monotonic clock, for publish-to-deliver latency.
    pub accepted_at: Instant,
    /// Encoded frames, shared by every subscriber.
    pub frames: FrameCache,
}
