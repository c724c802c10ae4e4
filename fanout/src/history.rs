//! Recent history of one channel, bounded by count, payload bytes and age.

use crate::Publication;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one kept message costs beyond its payload: the entry, the `Publication` and its
/// `from` name, roughly. Counted so that a flood of tiny messages is bounded too.
pub(crate) const ENTRY_OVERHEAD: usize = 96;

/// The bytes a publication counts for against the history bounds.
pub(crate) fn cost(publication: &Publication) -> usize {
    publication.data.len() + ENTRY_OVERHEAD
}

/// A channel's newest publications, oldest first, each with its acceptance instant.
#[derive(Debug, Default)]
pub(crate) struct History {
    entries: VecDeque<(Instant, Arc<Publication>)>,
    bytes: usize,
}

impl History {
    /// Appends `publication` and drops the oldest entries past `max_len` or `max_bytes` (the
    /// newest one always stays), but none with an offset above `keep_after` (not archived
    /// yet: see [`crate::archive::ArchiveMark`]). Returns the bytes it added minus the bytes
    /// it dropped.
    pub(crate) fn push(
        &mut self,
        at: Instant,
        publication: Arc<Publication>,
        max_len: usize,
        max_bytes: usize,
        keep_after: u64,
    ) -> isize {
        let added = cost(&publication);
        self.entries.push_back((at, publication));
        self.bytes += added;
        let mut dropped = 0;
        while self.entries.len() > max_len || (self.bytes > max_bytes && self.entries.len() > 1) {
            match self.pop_front(keep_after) {
                0 => break,
                cost => dropped += cost,
            }
        }
        added as isize - dropped as isize
    }

    /// Drops the oldest entry unless its offset is above `keep_after`; returns its cost (0
    /// when nothing was dropped).
    pub(crate) fn pop_front(&mut self, keep_after: u64) -> usize {
        match self.entries.front() {
            Some((_, p)) if p.offset <= keep_after => {
                let c = cost(p);
                self.entries.pop_front();
                self.bytes -= c;
                c
            }
            _ => 0,
        }
    }

    /// Drops entries accepted more than `ttl` before `now` (none with an offset above
    /// `keep_after`); returns the bytes dropped.
    pub(crate) fn expire(&mut self, now: Instant, ttl: Duration, keep_after: u64) -> usize {
        let mut dropped = 0;
        while let Some((at, _)) = self.entries.front() {
            if now.duration_since(*at) <= ttl {
                break;
            }
            match self.pop_front(keep_after) {
                0 => break,
                cost => dropped += cost,
            }
        }
        if self.entries.is_empty() && self.entries.capacity() > 16 {
            self.entries = VecDeque::new();
        }
        dropped
    }

    /// True when nothing is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of messages held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Up to `limit` entries after offset `since` and before offset `before` (oldest first),
    /// or, without `since`, the newest `limit` of those before `before`.
    pub(crate) fn read(
        &self,
        since: Option<u64>,
        before: Option<u64>,
        limit: usize,
    ) -> Vec<Arc<Publication>> {
        // Offsets in the deque are contiguous, so indexes are arithmetic.
        let Some((_, front)) = self.entries.front() else {
            return Vec::new();
        };
        let len = self.entries.len();
        let end = before.map_or(len, |b| (b.saturating_sub(front.offset) as usize).min(len));
        let start = match since {
            None => end.saturating_sub(limit),
            Some(since) => (since.saturating_add(1).saturating_sub(front.offset) as usize).min(end),
        };
        self.entries
            .range(start..end)
            .take(limit)
            .map(|e| e.1.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Payload;
    use bytes::Bytes;

    fn publication(offset: u64, size: usize) -> Arc<Publication> {
        Arc::new(Publication {
            channel: "c".into(),
            offset,
            epoch: "e".into(),
            from: "u".into(),
            data: Payload::Json(Bytes::from(vec![b'1'; size])),
            ts: 0,
        })
    }

    #[test]
    fn bounded_by_bytes_keeping_the_newest() {
        let now = Instant::now();
        let mut h = History::default();
        let per = 1000 + ENTRY_OVERHEAD;
        for offset in 1..=10 {
            h.push(now, publication(offset, 1000), 100, 3 * per, u64::MAX);
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.bytes, 3 * per);
        assert_eq!(h.read(None, None, 10)[0].offset, 8);
        let offsets = |v: Vec<Arc<Publication>>| v.iter().map(|p| p.offset).collect::<Vec<_>>();
        assert_eq!(offsets(h.read(None, Some(10), 10)), [8, 9]);
        assert_eq!(offsets(h.read(None, Some(10), 1)), [9]);
        assert_eq!(offsets(h.read(Some(7), Some(10), 10)), [8, 9]);
        assert_eq!(offsets(h.read(Some(8), None, 10)), [9, 10]);
        assert_eq!(offsets(h.read(None, Some(8), 10)), Vec::<u64>::new());
        assert_eq!(offsets(h.read(Some(20), None, 10)), Vec::<u64>::new());
        // One message over the bound on its own is still kept.
        let delta = h.push(now, publication(11, 10_000), 100, 3 * per, u64::MAX);
        assert_eq!(h.len(), 1);
        assert_eq!(delta, (10_000 + ENTRY_OVERHEAD) as isize - 3 * per as isize);
        let dropped = h.expire(
            now + Duration::from_secs(2),
            Duration::from_secs(1),
            u64::MAX,
        );
        assert_eq!(dropped, 10_000 + ENTRY_OVERHEAD);
        assert!(h.is_empty() && h.bytes == 0);
    }

    #[test]
    fn keeps_what_the_archive_does_not_hold_yet() {
        let now = Instant::now();
        let mut h = History::default();
        let offsets = |v: Vec<Arc<Publication>>| v.iter().map(|p| p.offset).collect::<Vec<_>>();
        // Archived through 3: 4 and later stay past the count bound.
        for offset in 1..=8 {
            h.push(now, publication(offset, 10), 2, usize::MAX, 3);
        }
        assert_eq!(offsets(h.read(Some(0), None, 100)), [4, 5, 6, 7, 8]);
        // Nor does age drop them.
        let later = now + Duration::from_secs(10);
        assert_eq!(h.expire(later, Duration::from_secs(1), 3), 0);
        assert_eq!(h.len(), 5);
        // Once archived, the bounds apply again at the next push or expiry.
        h.push(now, publication(9, 10), 2, usize::MAX, u64::MAX);
        assert_eq!(offsets(h.read(Some(0), None, 100)), [8, 9]);
        assert!(h.expire(later, Duration::from_secs(1), u64::MAX) > 0);
        assert!(h.is_empty());
    }
}
