//! Following Redis as it changes under the node: a reconnect, and on a Redis Cluster slot
//! moves and failovers. The node re-reads the slot map, subscribes again where a partition's
//! primary changed (Redis drops the shard subscriptions of a moved slot), checks the moved
//! channels for lost writes, then heals every channel by offset.

use super::RedisBroker;
use super::positions::CheckScope;
use super::track::Track;
use fred::interfaces::{ClientLike, PubsubInterface};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Channels per SSUBSCRIBE when subscribing again.
const RESUBSCRIBE_BATCH: usize = 500;

impl RedisBroker {
    /// On a Redis Cluster: the primary that owns each partition's slot, as the subscriber
    /// client last learned it.
    pub(super) fn partition_owners(&self) -> Vec<Option<String>> {
        let state = fred::interfaces::ClusterInterface::cached_cluster_state(&self.subscriber);
        let keyspace = &self.config.keyspace;
        (0..keyspace.partitions())
            .map(|p| {
                state
                    .as_ref()
                    .and_then(|s| s.get_server(keyspace.slot(p)))
                    .map(|server| server.to_string())
            })
            .collect()
    }

    /// Subscribes again, partition by partition, to every channel this node follows in
    /// `partitions` (all of them when `None`), and to the control and reply channels with
    /// partition 0;
    /// returns whether every subscription went through.
    async fn resubscribe(&self, partitions: Option<&[usize]>) -> bool {
        let keyspace = &self.config.keyspace;
        let mut groups: Vec<Vec<String>> = vec![Vec::new(); keyspace.partitions()];
        groups[0].push(self.control_channel.clone());
        groups[0].push(self.reply_channel.clone());
        for channel in self.tracks.read().keys() {
            let p = keyspace.partition(channel);
            groups[p].push(keyspace.pubsub_channel_in(p, channel));
        }
        let mut ok = true;
        for (p, channels) in groups.into_iter().enumerate() {
            if partitions.is_some_and(|wanted| !wanted.contains(&p)) {
                continue;
            }
            for chunk in channels.chunks(RESUBSCRIBE_BATCH) {
                let result = self.subscriber.ssubscribe(chunk.to_vec()).await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, partition = p, "resubscribing failed");
                    ok = false;
                }
            }
        }
        ok
    }

    /// Brings the node's subscriptions in line with Redis: on a Redis Cluster re-reads the
    /// slot map and finds the partitions whose primary changed (a slot move, or a failover:
    /// Redis drops the shard subscriptions of a moved slot, and a promoted replica may lack
    /// the last writes); subscribes again (every channel after a reconnect, else those of the
    /// changed partitions), checks the changed partitions' channels (and any other suspect
    /// one) for lost writes, then heals every channel. Returns false when a subscription or
    /// a check failed (call again).
    pub(super) async fn resync(self: &Arc<Self>, reconnected: bool) -> bool {
        let clustered = self.subscriber.is_clustered();
        if clustered
            && let Err(e) = fred::interfaces::ClusterInterface::sync_cluster(&self.subscriber).await
        {
            tracing::debug!(error = %e, "cluster slot map not refreshed");
            return false;
        }
        let now = if clustered {
            self.partition_owners()
        } else {
            Vec::new()
        };
        let changed: Vec<usize> = {
            let before = self.owners.lock();
            (0..now.len())
                .filter(|p| before.get(*p) != now.get(*p))
                .collect()
        };
        let unverified = self.unverified.swap(false, Ordering::Relaxed);
        if !reconnected && changed.is_empty() && !unverified {
            return true;
        }
        if !changed.is_empty() {
            tracing::info!(partitions = ?changed, "partitions on another Redis primary; resubscribing");
            self.stats
                .moved
                .fetch_add(changed.len() as u64, Ordering::Relaxed);
            // Nothing of a moved partition is delivered before its lost-write check (below):
            // once subscribed again, the new primary's messages may reuse lost offsets.
            for (channel, track) in self.tracks.read().iter() {
                if changed.contains(&self.config.keyspace.partition(channel)) {
                    track.lock().suspect = true;
                }
            }
        }
        let subscribed = if reconnected {
            self.resubscribe(None).await
        } else {
            self.resubscribe(Some(&changed)).await
        };
        if !subscribed {
            self.unverified.store(true, Ordering::Relaxed);
            return false;
        }
        let suspects: Vec<(Arc<str>, Arc<Mutex<Track>>)> = self
            .tracks
            .read()
            .iter()
            .filter(|(_, t)| t.lock().suspect)
            .map(|(c, t)| (c.clone(), t.clone()))
            .collect();
        let mut verified = true;
        for (channel, track) in suspects {
            verified &= self.verify(&channel, &track).await;
        }
        if !verified {
            self.unverified.store(true, Ordering::Relaxed);
            return false;
        }
        *self.owners.lock() = now;
        self.check_positions(CheckScope::All).await;
        true
    }
}
