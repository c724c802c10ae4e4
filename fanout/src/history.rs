//! Recent history of one channel, bounded by count and age.

use crate::Publication;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A channel's newest publications, oldest first, each with its acceptance instant.
#[derive(Debug, Default)]
pub(crate) struct History {
    entries: VecDeque<(Instant, Arc<Publication>)>,
}

impl History {
    /// Appends `publication` and drops what exceeds `max_len`.
    pub(crate) fn push(&mut self, at: Instant, publication: Arc<Publication>, max_len: usize) {
        self.entries.push_back((at, publication));
        while self.entries.len() > max_len {
            self.entries.pop_front();
        }
    }

    /// Drops entries accepted more than `ttl` before `now`.
    pub(crate) fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some((at, _)) = self.entries.front() {
            if now.duration_since(*at) > ttl {
                self.entries.pop_front();
            } else {
                break;
            }
        }
        if self.entries.is_empty() && self.entries.capacity() > 16 {
            self.entries = VecDeque::new();
        }
    }

    /// True when nothing is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Up to `limit` entries after offset `since` (oldest first), or the newest `limit` when
    /// `since` is `None`.
    pub(crate) fn read(&self, since: Option<u64>, limit: usize) -> Vec<Arc<Publication>> {
        match since {
            None => {
                let skip = self.entries.len().saturating_sub(limit);
                self.entries
                    .iter()
                    .skip(skip)
                    .map(|e| e.1.clone())
                    .collect()
            }
            Some(since) => {
                // Offsets in the deque are contiguous, so the start index is arithmetic.
                let Some((_, front)) = self.entries.front() else {
                    return Vec::new();
                };
                let start = (since + 1).saturating_sub(front.offset) as usize;
                self.entries
                    .iter()
                    .skip(start)
                    .take(limit)
                    .map(|e| e.1.clone())
                    .collect()
            }
        }
    }
}
