//! Position checks: the safety net under pub/sub. The node compares the top offset Redis
//! holds for each subscribed channel with what it delivered, and heals the difference.

use super::RedisBroker;
use super::connect::unavailable;
use super::track::Track;
use fred::types::Value;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Channels per pipelined position check.
const POSITION_BATCH: usize = 500;

/// Which channels a position check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CheckScope {
    /// Every subscribed channel (after a reconnect, a slot move or a lagging receiver).
    All,
    /// The periodic check: channels with recent traffic or an open gap, and one slice of
    /// the quiet ones.
    Due,
}

impl RedisBroker {
    /// Checks in one sweep period: a quiet channel is read at one of them.
    fn sweep_rounds(&self) -> u32 {
        let check = self.config.position_check_interval.as_millis().max(1);
        let sweep = self.config.position_sweep_interval.as_millis();
        sweep.div_ceil(check).clamp(1, u128::from(u8::MAX)) as u32
    }

    /// Position check: subscribed channels' top offsets against the node's. Pub/sub loses
    /// nothing on a live connection, and a reconnect, a slot move or a lagging receiver checks
    /// every channel at once, so the periodic check (`CheckScope::Due`) is a safety net sized
    /// to traffic: channels that delivered within the last sweep period every interval, quiet
    /// ones (an idle user's personal channel) once per sweep period.
    pub(super) async fn check_positions(self: &Arc<Self>, scope: CheckScope) {
        let rounds = self.sweep_rounds();
        let round = match scope {
            CheckScope::All => 0,
            CheckScope::Due => self.check_round.fetch_add(1, Ordering::Relaxed) % rounds,
        };
        let channels: Vec<(Arc<str>, Arc<Mutex<Track>>)> = self
            .tracks
            .read()
            .iter()
            .filter(|(_, t)| match scope {
                CheckScope::All => true,
                CheckScope::Due => {
                    let mut t = t.lock();
                    t.due(rounds as u8) || t.slice % rounds == round
                }
            })
            .map(|(c, t)| (c.clone(), t.clone()))
            .collect();
        for batch in channels.chunks(POSITION_BATCH) {
            // What each track had delivered before the read: Redis's top cannot be below it
            // unless Redis lost writes.
            let delivered: Vec<(Option<Arc<str>>, u64)> = batch
                .iter()
                .map(|(_, t)| {
                    let t = t.lock();
                    (t.epoch.clone(), t.last)
                })
                .collect();
            let pipeline = self.client.pipeline();
            for (channel, _) in batch {
                let keyspace = &self.config.keyspace;
                let meta = keyspace.meta(keyspace.partition(channel), channel);
                let _: Result<(), _> =
                    fred::interfaces::HashesInterface::hmget(&pipeline, meta, vec!["e", "o"]).await;
            }
            let results: Result<Vec<Value>, _> = pipeline.all().await;
            let results = match results {
                Ok(r) => {
                    self.healthy.store(true, Ordering::Relaxed);
                    r
                }
                Err(e) => {
                    self.mark(Err(&unavailable(e)));
                    return;
                }
            };
            for (((channel, track), value), (seen_epoch, seen_last)) in
                batch.iter().zip(results).zip(delivered)
            {
                let (epoch, top) = match value.into_array().as_slice() {
                    [e, o] => (
                        e.as_bytes_str().map(|s| s.to_string()),
                        o.as_u64().unwrap_or(0),
                    ),
                    _ => (None, 0),
                };
                let (behind, moved) = {
                    let t = track.lock();
                    match &epoch {
                        // The channel's state is gone (expired or lost): a read recreates it
                        // under a new epoch, and subscribers are told.
                        None => (false, t.last > 0),
                        Some(e) => {
                            let moved = t.epoch.as_deref() != Some(e.as_str());
                            (t.last < top, moved)
                        }
                    }
                };
                // Redis's top below what this node delivered in the same epoch: lost writes.
                let regressed = epoch
                    .as_deref()
                    .filter(|e| seen_epoch.as_deref() == Some(*e) && top < seen_last);
                let moved = match regressed {
                    Some(e) => moved || self.rewind(channel, e, seen_last).await,
                    None => moved,
                };
                if behind || moved {
                    self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                    let mut t = track.lock();
                    if !t.healing {
                        t.healing = true;
                        drop(t);
                        self.spawn_heal(channel.clone(), track.clone(), Some(top), moved);
                    }
                }
            }
        }
    }
}
