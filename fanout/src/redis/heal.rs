//! Gap healing: what the node delivers on a channel comes in offset order with nothing
//! missing. A [`Track`] per subscribed channel holds back what arrives after a gap; the node
//! reads the missing range from the channel's history stream and delivers it in order;
//! what the stream no longer holds is reported with `Dispatcher::lost`. After a failover a
//! channel whose offset went backwards starts a new epoch (rewind.lua).

use super::RedisBroker;
use super::scripts::{ChannelKeys, RewindCall};
use super::track::{self, Absorbed, Track};
use crate::Publication;
use crate::broker::BrokerError;
use crate::util::new_epoch;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Most messages one gap-healing read asks for.
const HEAL_BATCH: usize = 1000;

impl RedisBroker {
    /// Delivers a publication that arrived by pub/sub, in order, healing a gap before it.
    pub(super) fn on_publication(self: &Arc<Self>, publication: Publication) {
        let Some(track) = self.track(&publication.channel) else {
            return;
        };
        let channel = publication.channel.clone();
        let wants_heal = track
            .lock()
            .offer(Arc::new(publication), &*self.dispatcher, &self.stats);
        if wants_heal {
            self.spawn_heal(channel, track, None, false);
        }
    }

    /// Heals `channel` in the background (the track's `healing` flag is already set) until
    /// nothing is held back and `upto` is delivered, retrying while Redis is unreachable.
    pub(super) fn spawn_heal(
        self: &Arc<Self>,
        channel: Arc<str>,
        track: Arc<Mutex<Track>>,
        upto: Option<u64>,
        force: bool,
    ) {
        let broker = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(50);
            loop {
                if let Err(e) = broker.heal(&channel, &track, upto, force).await {
                    if broker.track(&channel).is_none() {
                        break;
                    }
                    tracing::warn!(error = %e, %channel, "gap healing failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
                let mut t = track.lock();
                // A suspect track is healed once its lost-write check ends (`resync`).
                if !t.needs(None) || t.suspect {
                    t.healing = false;
                    break;
                }
            }
        });
    }

    /// Reads from the stream until the track has delivered everything up to `upto` (or up to
    /// the gap it holds), reporting what the stream no longer has. With `force` it reads at
    /// least once (the channel's epoch may have changed).
    pub(super) async fn heal(
        &self,
        channel: &str,
        track: &Mutex<Track>,
        upto: Option<u64>,
        force: bool,
    ) -> Result<(), BrokerError> {
        let mut force = force;
        loop {
            let since = {
                let t = track.lock();
                if t.suspect || !force && !t.needs(upto) {
                    return Ok(());
                }
                t.read_from()
            };
            force = false;
            let page = self.read(channel, Some(since), None, HEAL_BATCH).await?;
            let complete = page.publications.len() < HEAL_BATCH;
            let absorbed = track
                .lock()
                .absorb(page, complete, &*self.dispatcher, &self.stats);
            match absorbed {
                Absorbed::Read => {}
                Absorbed::Held => return Ok(()),
                Absorbed::Reused { epoch, last } => {
                    if !self.rewind(channel, &epoch, last).await {
                        // The track stays suspect: the next resync checks it again.
                        self.unverified.store(true, Ordering::Relaxed);
                        return Ok(());
                    }
                    track.lock().retire(&*self.dispatcher, &self.stats);
                }
            }
        }
    }

    /// Starts a new epoch for a channel whose offset went backwards below `last` in `epoch`
    /// (see rewind.lua); returns whether the channel's epoch is no longer `epoch`.
    pub(super) async fn rewind(&self, channel: &str, epoch: &str, last: u64) -> bool {
        tracing::warn!(
            %channel, %epoch, last,
            "the channel's offset went backwards in Redis (a failover lost acknowledged \
             writes): new epoch, subscribers reload"
        );
        let keyspace = &self.config.keyspace;
        let call = RewindCall {
            keys: ChannelKeys::new(keyspace, keyspace.partition(channel), channel),
            epoch,
            last,
            new_epoch: new_epoch(),
            meta_ttl: self.config.meta_ttl,
        };
        let done = self.scripts.rewind(&self.client, &call).await;
        match done {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, %channel, "rewinding failed; retried at the next check");
                false
            }
        }
    }

    /// Checks that Redis still holds the publication this node delivered last on a suspect
    /// `channel` (its partition moved to another primary): if its offset is now missing or
    /// another publication's, Redis lost acknowledged writes, and the channel starts a new
    /// epoch. Either way the track delivers again: what was held (`confirmed`), or, once
    /// subscribers were told to reload, the channel's new epoch (`retire`; the position check
    /// that follows finds it). Returns false when Redis could not be read or the channel not
    /// rewound: the track stays suspect, and the caller checks again.
    pub(super) async fn verify(
        self: &Arc<Self>,
        channel: &Arc<str>,
        track: &Arc<Mutex<Track>>,
    ) -> bool {
        let (epoch, last, mark) = {
            let t = track.lock();
            (t.epoch.clone(), t.last, t.mark)
        };
        let (Some(epoch), Some(mark)) = (epoch, mark) else {
            // Nothing delivered in a known epoch: nothing that could be reused.
            self.confirm(channel, track);
            return true;
        };
        let Ok(page) = self.read(channel, Some(last - 1), None, 1).await else {
            return false;
        };
        if page.epoch != epoch {
            track.lock().retire(&*self.dispatcher, &self.stats);
            return true;
        }
        let lost = page.offset < last
            || page
                .publications
                .first()
                .is_some_and(|p| p.offset == last && track::fingerprint(p) != mark);
        if !lost {
            self.confirm(channel, track);
            return true;
        }
        if !self.rewind(channel, &epoch, last.max(page.offset)).await {
            return false;
        }
        track.lock().retire(&*self.dispatcher, &self.stats);
        true
    }

    /// Ends a suspect track's check with what Redis holds unchanged.
    fn confirm(self: &Arc<Self>, channel: &Arc<str>, track: &Arc<Mutex<Track>>) {
        if track.lock().confirmed(&*self.dispatcher) {
            self.spawn_heal(channel.clone(), track.clone(), None, false);
        }
    }
}
