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

    /// A page read from the stream after an offset at most `last` (`complete`: it holds
    /// everything the stream had after that offset): delivers it in order and reports what
    /// the stream no longer holds.
    pub(super) fn absorb(
        &mut self,
        page: HistoryPage,
        complete: bool,
        dispatcher: &dyn Dispatcher,
        stats: &RedisBrokerStats,
    ) {
        if self.epoch.as_ref() != Some(&page.epoch) {
            // The channel's state was lost and recreated: read the new epoch from its start.
            self.new_epoch(page.epoch, dispatcher, stats);
            self.target = page.offset;
            return;
        }
        for publication in page.publications {
            if publication.offset <= self.last {
                continue;
            }
            if publication.offset > self.last + 1 {
                self.lose(dispatcher, stats);
            }
            dispatcher.dispatch(&publication);
            stats.healed.fetch_add(1, Ordering::Relaxed);
            self.delivered(&publication);
        }
        if complete && self.last < page.offset {
            // Nothing more in the stream, yet the channel is further on: expired or trimmed.
            self.lose(dispatcher, stats);
            self.last = page.offset;
            self.mark = None;
        }
        self.drain(dispatcher);
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
