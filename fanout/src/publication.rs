//! One accepted message, shared by every subscriber and the history.

use std::any::Any;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Encoded forms of a publication, one slot per wire encoding, filled on first use so that a
/// message is encoded at most once per encoding however many subscribers receive it.
///
/// The slots hold whatever frame type the transport sends (for example a WebSocket message
/// whose text is already checked as UTF-8), so that nothing is redone per subscriber; the
/// type should be cheap to clone (reference-counted bytes).
#[derive(Default)]
pub struct FrameCache {
    slots: [OnceLock<Box<dyn Any + Send + Sync>>; 2],
}

impl std::fmt::Debug for FrameCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let filled = self.slots.iter().filter(|s| s.get().is_some()).count();
        write!(f, "FrameCache({filled} of 2 encoded)")
    }
}

impl FrameCache {
    /// The encoded frame in `slot` (0 or 1), computed by `encode` the first time. A slot
    /// filled with another type (a caller bug) is not overwritten: `encode` runs again.
    pub fn get_or_encode<T: Clone + Send + Sync + 'static>(
        &self,
        slot: usize,
        encode: impl Fn() -> T,
    ) -> T {
        let cached = self.slots[slot].get_or_init(|| Box::new(encode()));
        match cached.downcast_ref::<T>() {
            Some(frame) => frame.clone(),
            None => encode(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FrameCache;
    use std::cell::Cell;

    #[test]
    fn encodes_once_per_slot() {
        let cache = FrameCache::default();
        let calls = Cell::new(0);
        let encode = || {
            calls.set(calls.get() + 1);
            String::from("frame")
        };
        assert_eq!(cache.get_or_encode(0, encode), "frame");
        assert_eq!(cache.get_or_encode(0, encode), "frame");
        assert_eq!(calls.get(), 1);
        // Another type in a filled slot is encoded, not cached over.
        assert_eq!(cache.get_or_encode(0, || 7u8), 7);
        assert_eq!(cache.get_or_encode(1, || 9u8), 9);
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
