//! Idempotency keys of one channel, remembered for the dedup window in bounded memory.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Remembers `idem → offset` for a window; refuses new keys when full rather than forget a
/// key early, so a retry inside the window never publishes twice.
#[derive(Debug, Default)]
pub(crate) struct DedupTable {
    offsets: HashMap<String, u64>,
    order: VecDeque<(Instant, String)>,
}

/// The table holds as many keys as it may; the publish should be retried later.
#[derive(Debug)]
pub(crate) struct DedupFull;

impl DedupTable {
    /// The offset recorded for `key`, if still inside the window.
    pub(crate) fn get(&self, key: &str) -> Option<u64> {
        self.offsets.get(key).copied()
    }

    /// Forgets keys older than `window`.
    pub(crate) fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) <= window {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.offsets.remove(&key);
            }
        }
        if self.order.is_empty() && self.order.capacity() > 16 {
            *self = Self::default();
        }
    }

    /// Checks there is room for one more key.
    pub(crate) fn ensure_room(&self, max_keys: usize) -> Result<(), DedupFull> {
        if self.offsets.len() >= max_keys {
            Err(DedupFull)
        } else {
            Ok(())
        }
    }

    /// Records `key → offset` at `now`.
    pub(crate) fn insert(&mut self, key: String, offset: u64, now: Instant) {
        self.order.push_back((now, key.clone()));
        self.offsets.insert(key, offset);
    }

    /// True when no key is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}
