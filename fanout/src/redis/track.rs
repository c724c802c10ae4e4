//! What a node knows of one subscribed channel's stream: the epoch and the last offset it
//! handed to the dispatcher, and live publications that arrived after a gap.

use super::RedisBrokerStats;
use crate::{Dispatcher, HistoryPage, Publication};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Publications held back behind a gap, at most this many (then the gap is healed from the
/// stream and the live ones read again from there).
const MAX_PENDING: usize = 10_000;

/// What a read of the stream did to a track.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Absorbed {
    /// Delivered what continued the track (possibly nothing).
    Read,
    /// Nothing: the track waits for its lost-write check.
    Held,
    /// Nothing: Redis holds another publication at `last`, the offset this node delivered
    /// last in `epoch` (a failover lost acknowledged writes); the channel needs a new epoch,
    /// and the track is suspect until then.
    Reused { epoch: Arc<str>, last: u64 },
}

/// A subscribed channel's delivery position on this node.
#[derive(Debug)]
pub(super) struct Track {
    channel: Arc<str>,
    /// The epoch of `last`; `None` until the subscription's position is known.
    pub(super) epoch: Option<Arc<str>>,
    /// Last offset handed to the dispatcher.
    pub(super) last: u64,
    /// What the publication at `last` looked like (acceptance time, payload length), when
    /// this node delivered it: a failover that lost it and reused its offset shows as a
    /// different publication there.
    pub(super) mark: Option<(u64, usize)>,
    /// Live publications after a gap, by offset.
    pending: BTreeMap<u64, Arc<Publication>>,
    /// A healing task runs for this channel.
    pub(super) healing: bool,
    /// The channel's partition moved to another Redis primary: nothing is delivered until
    /// the node has checked that the new primary still holds what was delivered last (a
    /// failover may have lost it, and new messages would then reuse its offsets).
    pub(super) suspect: bool,
    /// Nothing was delivered since subscribers were told to reload (a new epoch): a gap
    /// before the first delivery needs no second notice.
    told: bool,
    /// Deliver at least up to here (set when a new epoch was found: read it from its start).
    target: u64,
    /// Something was delivered since the last position check.
    touched: bool,
    /// Short-interval position checks left that read this channel since its last traffic (a
    /// quiet channel is read only by the slow sweep).
    active: u8,
    /// Which slice of the slow sweep reads this channel.
    pub(super) slice: u32,
}

impl Track {
    pub(super) fn new(channel: Arc<str>, slice: u32) -> Self {
        Self {
            channel,
            epoch: None,
            last: 0,
            mark: None,
            pending: BTreeMap::new(),
            healing: false,
            suspect: false,
            told: false,
            target: 0,
            touched: false,
            active: 0,
            slice,
        }
    }

    /// Whether this short-interval position check should read the channel: it had traffic
    /// within the last `rounds` checks (a lost last message of a burst is found within one
    /// interval), or a gap is open. Counts one check down.
    pub(super) fn due(&mut self, rounds: u8) -> bool {
        if std::mem::take(&mut self.touched) {
            self.active = rounds;
        }
        let due = self.active > 0 || self.healing || !self.pending.is_empty();
        self.active = self.active.saturating_sub(1);
        due
    }

    /// The node's subscription is live and the channel was at `offset`: deliver from there.
    /// Returns true when what arrived meanwhile shows a gap to heal.
    pub(super) fn start(
        &mut self,
        epoch: &Arc<str>,
        offset: u64,
        dispatcher: &dyn Dispatcher,
    ) -> bool {
        self.epoch = Some(epoch.clone());
        self.last = offset;
        self.mark = None;
        self.pending.retain(|_, p| p.epoch == *epoch);
        self.drain(dispatcher);
        self.claim_heal()
    }

    /// A live publication. Returns true when the caller should start healing a gap.
    pub(super) fn offer(
        &mut self,
        publication: Arc<Publication>,
        dispatcher: &dyn Dispatcher,
        stats: &RedisBrokerStats,
    ) -> bool {
        let Some(epoch) = &self.epoch else {
            // Subscribing: kept until the position is known.
            self.hold(publication);
            return false;
        };
        if self.suspect {
            // Delivered once the new primary is checked (`confirmed`), or dropped (`retire`).
            self.hold(publication);
            return false;
        }
        if *epoch != publication.epoch {
            self.new_epoch(publication.epoch.clone(), dispatcher, stats);
        }
        if publication.offset <= self.last {
            return false;
        }
        if publication.offset == self.last + 1 {
            dispatcher.dispatch(&publication);
            self.delivered(&publication);
            self.drain(dispatcher);
            return self.claim_heal();
        }
        stats.gaps.fetch_add(1, Ordering::Relaxed);
        self.hold(publication);
        self.claim_heal()
    }

    /// Whether the node is behind: a gap is held, or `upto` was not delivered yet.
    pub(super) fn needs(&self, upto: Option<u64>) -> bool {
        !self.pending.is_empty() || self.last < upto.unwrap_or(0).max(self.target)
    }

    /// Where a read of the stream starts to continue this track: one before `last` when the
    /// node knows what it delivered there, so that [`Track::absorb`] sees whether Redis
    /// still holds it.
    pub(super) fn read_from(&self) -> u64 {
        match self.mark {
            Some(_) => self.last - 1,
            None => self.last,
        }
    }

    /// A page read from the stream after [`Track::read_from`] or an earlier offset
    /// (`complete`: it holds everything the stream had after that offset): delivers it in
    /// order and reports what the stream no longer holds. Delivers nothing while the track is
    /// suspect, and nothing when the page holds another publication where this node
    /// delivered its last: Redis lost acknowledged writes and reuses their offsets.
    pub(super) fn absorb(
        &mut self,
        page: HistoryPage,
        complete: bool,
        dispatcher: &dyn Dispatcher,
        stats: &RedisBrokerStats,
    ) -> Absorbed {
        if self.suspect {
            return Absorbed::Held;
        }
        if self.epoch.as_ref() != Some(&page.epoch) {
            // The channel's state was lost and recreated: read the new epoch from its start.
            self.new_epoch(page.epoch, dispatcher, stats);
            self.target = page.offset;
            return Absorbed::Read;
        }
        if let (Some(mark), Some(first)) = (self.mark, page.publications.first())
            && first.offset == self.last
            && fingerprint(first) != mark
        {
            // Nothing more of this stream until the channel is rewound (or checked again).
            self.suspect = true;
            return Absorbed::Reused {
                epoch: page.epoch,
                last: self.last,
            };
        }
        for publication in page.publications {
            if publication.offset <= self.last {
                continue;
            }
            if publication.offset > self.last + 1 && !self.told {
                self.lose(dispatcher, stats);
            }
            dispatcher.dispatch(&publication);
            stats.healed.fetch_add(1, Ordering::Relaxed);
            self.delivered(&publication);
        }
        if complete && self.last < page.offset {
            // Nothing more in the stream, yet the channel is further on: expired or trimmed.
            if !self.told {
                self.lose(dispatcher, stats);
            }
            self.last = page.offset;
            self.mark = None;
        }
        self.drain(dispatcher);
        Absorbed::Read
    }

    /// The lost-write check found what this node delivered last still in Redis: delivers
    /// what arrived meanwhile. Returns true when a gap is held (the caller heals it).
    pub(super) fn confirmed(&mut self, dispatcher: &dyn Dispatcher) -> bool {
        self.suspect = false;
        if let Some(epoch) = self.epoch.clone() {
            self.pending.retain(|_, p| p.epoch == epoch);
            self.drain(dispatcher);
        }
        self.claim_heal()
    }

    /// Redis no longer continues what this node delivered (lost writes, or another epoch):
    /// subscribers are told to reload, and nothing more of the old stream is delivered; the
    /// next read finds where the channel goes on.
    pub(super) fn retire(&mut self, dispatcher: &dyn Dispatcher, stats: &RedisBrokerStats) {
        self.suspect = false;
        self.lose(dispatcher, stats);
        self.epoch = None;
        self.last = 0;
        self.mark = None;
        self.target = 0;
        self.told = true;
        self.pending.clear();
    }

    fn new_epoch(
        &mut self,
        epoch: Arc<str>,
        dispatcher: &dyn Dispatcher,
        stats: &RedisBrokerStats,
    ) {
        if self.epoch.is_some() {
            self.lose(dispatcher, stats);
        }
        self.told = true;
        self.epoch = Some(epoch.clone());
        self.last = 0;
        self.mark = None;
        self.target = 0;
        self.pending.retain(|_, p| p.epoch == epoch);
    }

    fn lose(&mut self, dispatcher: &dyn Dispatcher, stats: &RedisBrokerStats) {
        stats.lost.fetch_add(1, Ordering::Relaxed);
        dispatcher.lost(&self.channel);
    }

    fn hold(&mut self, publication: Arc<Publication>) {
        if self.pending.len() >= MAX_PENDING {
            // The stream has them: forget the newest held, the heal reads them again.
            self.pending.pop_last();
        }
        self.pending.insert(publication.offset, publication);
    }

    fn drain(&mut self, dispatcher: &dyn Dispatcher) {
        while let Some(entry) = self.pending.first_entry() {
            let offset = *entry.key();
            if offset <= self.last {
                entry.remove();
            } else if offset == self.last + 1 {
                let publication = entry.remove();
                dispatcher.dispatch(&publication);
                self.delivered(&publication);
            } else {
                break;
            }
        }
    }

    fn delivered(&mut self, publication: &Publication) {
        self.touched = true;
        self.told = false;
        self.last = publication.offset;
        self.mark = Some(fingerprint(publication));
    }

    /// True once per gap: the caller starts the healing task.
    fn claim_heal(&mut self) -> bool {
        if self.pending.is_empty() || self.healing {
            return false;
        }
        self.healing = true;
        true
    }
}

/// What tells two publications at one offset apart: acceptance time and payload length.
pub(super) fn fingerprint(publication: &Publication) -> (u64, usize) {
    (publication.ts, publication.data.bytes().len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommandReply, ControlEvent, NodeCommand, Payload};
    use bytes::Bytes;
    use parking_lot::Mutex;

    /// Records what the track hands on.
    #[derive(Default)]
    struct Seen {
        delivered: Mutex<Vec<(Arc<str>, u64)>>,
        lost: Mutex<usize>,
    }

    impl Dispatcher for Seen {
        fn dispatch(&self, p: &Arc<Publication>) {
            self.delivered.lock().push((p.epoch.clone(), p.offset));
        }
        fn dispatch_control(&self, _: &ControlEvent) {}
        fn dispatch_command(&self, _: &NodeCommand) -> CommandReply {
            unreachable!("no commands here")
        }
        fn lost(&self, _: &str) {
            *self.lost.lock() += 1;
        }
    }

    fn publication(epoch: &str, offset: u64, ts: u64) -> Arc<Publication> {
        Arc::new(Publication {
            channel: "room:a".into(),
            offset,
            epoch: epoch.into(),
            from: "server".into(),
            data: Payload::Json(Bytes::from(format!("{offset}"))),
            ts,
        })
    }

    /// A track that delivered offsets 1..=10 of epoch "e" (accepted at ts = offset).
    fn delivered_ten(seen: &Seen, stats: &RedisBrokerStats) -> Track {
        let mut track = Track::new("room:a".into(), 0);
        assert!(!track.start(&"e".into(), 0, seen));
        for n in 1..=10 {
            assert!(!track.offer(publication("e", n, n), seen, stats));
        }
        assert_eq!(seen.delivered.lock().len(), 10);
        track
    }

    #[test]
    fn a_suspect_track_delivers_nothing_until_its_check() {
        let (seen, stats) = (Seen::default(), RedisBrokerStats::default());
        let mut track = delivered_ten(&seen, &stats);
        track.suspect = true;
        // The new primary's next message: it looks like the one after the last.
        assert!(!track.offer(publication("e", 11, 100), &seen, &stats));
        assert_eq!(seen.delivered.lock().len(), 10, "held while suspect");
        assert!(!track.confirmed(&seen));
        assert_eq!(seen.delivered.lock().last().unwrap().1, 11);
        assert_eq!(*seen.lost.lock(), 0);
    }

    #[test]
    fn a_retired_track_tells_once_and_drops_the_old_stream() {
        let (seen, stats) = (Seen::default(), RedisBrokerStats::default());
        let mut track = delivered_ten(&seen, &stats);
        track.suspect = true;
        assert!(!track.offer(publication("e", 11, 100), &seen, &stats));
        track.retire(&seen, &stats);
        assert_eq!(*seen.lost.lock(), 1);
        // Late messages of the old stream are not delivered.
        assert!(!track.offer(publication("e", 12, 101), &seen, &stats));
        assert_eq!(seen.delivered.lock().len(), 10);
        // The next read finds the new epoch, which goes on after offset 10: no second notice.
        let page = |publications| HistoryPage {
            publications,
            offset: 12,
            epoch: "f".into(),
        };
        assert_eq!(
            track.absorb(page(vec![]), true, &seen, &stats),
            Absorbed::Read
        );
        let rest = vec![publication("f", 11, 102), publication("f", 12, 103)];
        assert_eq!(
            track.absorb(page(rest), true, &seen, &stats),
            Absorbed::Read
        );
        assert_eq!(*seen.lost.lock(), 1, "one reload notice");
        let delivered = seen.delivered.lock();
        assert_eq!(delivered[10..], [("f".into(), 11), ("f".into(), 12)]);
    }

    #[test]
    fn a_read_that_finds_another_message_at_the_last_offset_delivers_nothing() {
        let (seen, stats) = (Seen::default(), RedisBrokerStats::default());
        let mut track = delivered_ten(&seen, &stats);
        assert_eq!(track.read_from(), 9);
        // After a failover the stream holds new messages at 10 and 11, same epoch.
        let page = HistoryPage {
            publications: vec![publication("e", 10, 200), publication("e", 11, 201)],
            offset: 11,
            epoch: "e".into(),
        };
        assert_eq!(
            track.absorb(page, true, &seen, &stats),
            Absorbed::Reused {
                epoch: "e".into(),
                last: 10
            }
        );
        assert!(!track.offer(publication("e", 11, 201), &seen, &stats));
        assert_eq!(seen.delivered.lock().len(), 10);
        // The same read when Redis kept what was delivered goes on from there.
        let seen = Seen::default();
        let mut track = delivered_ten(&seen, &stats);
        let page = HistoryPage {
            publications: vec![publication("e", 10, 10), publication("e", 11, 201)],
            offset: 11,
            epoch: "e".into(),
        };
        assert_eq!(track.absorb(page, true, &seen, &stats), Absorbed::Read);
        assert_eq!(seen.delivered.lock().last().unwrap().1, 11);
    }
}
