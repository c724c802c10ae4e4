//! Where a channel's state lives in Redis: the same layout on one Redis and on a Redis Cluster.
//!
//! Channels are mapped onto a fixed number of **partitions** (`--redis-partitions`, the same
//! on every node). Every key of a channel, its sharded pub/sub channel, and its partition's
//! archive stream and presence indexes carry the partition's hash tag, so that one script
//! touches one hash slot and a node's subscriptions group by slot. Why partitions, not a tag
//! per channel:
//!
//! - the publish script appends to an archive stream atomically with the offset increment,
//!   and the archivers must be able to enumerate the streams: one per partition;
//! - presence scripts keep a per-node index of the channels where the node has entries (what
//!   the reaper walks when the node dies): one per node and partition;
//! - a slot move or failover is handled per partition (resubscribe its channels, heal them).
//!
//! Each partition's tag is chosen so that partition `i` of `P` hashes into the `i`-th of `P`
//! equal slot ranges: `redis-cli --cluster create` gives each primary an equal range, so the
//! partitions spread evenly over the primaries (and a partition's channels are still spread
//! over the cluster by the partitions themselves).

use fred::util::redis_keyslot;

/// Hash slots in a Redis Cluster.
const SLOTS: u32 = 16384;
/// Most partitions a keyspace may have.
pub const MAX_PARTITIONS: usize = 1024;

/// Key names of one gateway cluster (one prefix).
#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
    /// Per partition, the `<prefix>:{<tag>}` every key of the partition starts with.
    heads: Vec<String>,
    slots: Vec<u16>,
}

impl Keyspace {
    /// The keyspace of `prefix` with `partitions` partitions (1 ..= [`MAX_PARTITIONS`]).
    pub fn new(prefix: &str, partitions: usize) -> Self {
        let partitions = partitions.clamp(1, MAX_PARTITIONS);
        let mut heads = Vec::with_capacity(partitions);
        let mut slots = Vec::with_capacity(partitions);
        for i in 0..partitions {
            let (tag, slot) = tag_for(i, partitions);
            heads.push(format!("{prefix}:{{{tag}}}"));
            slots.push(slot);
        }
        Self {
            prefix: prefix.to_owned(),
            heads,
            slots,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Number of partitions.
    pub fn partitions(&self) -> usize {
        self.heads.len()
    }

    /// The partition of `channel` (FNV-1a of its name).
    pub fn partition(&self, channel: &str) -> usize {
        (crate::util::fnv1a(channel.bytes()) % self.heads.len() as u64) as usize
    }

    /// The hash slot of partition `p`.
    pub fn slot(&self, p: usize) -> u16 {
        self.slots[p]
    }

    // Every key name the gateway uses is built below, from the kind strings of one table:
    // callers name what they want, never a kind.

    /// The channel's meta hash: `e` epoch, `o` top offset, `a` highest offset archived.
    pub fn meta(&self, p: usize, channel: &str) -> String {
        self.key_in(p, channel, "m")
    }

    /// The channel's recent-history stream (entry id = offset).
    pub fn history(&self, p: usize, channel: &str) -> String {
        self.key_in(p, channel, "h")
    }

    /// The channel's idempotency keys: key → offset.
    pub fn idem(&self, p: usize, channel: &str) -> String {
        self.key_in(p, channel, "i")
    }

    /// The channel's idempotency keys by expiry (a sorted set, score = expiry in ms).
    pub fn idem_expiry(&self, p: usize, channel: &str) -> String {
        self.key_in(p, channel, "iz")
    }

    /// The sharded pub/sub channel of `channel`.
    pub fn pubsub_channel(&self, channel: &str) -> String {
        self.pubsub_channel_in(self.partition(channel), channel)
    }

    /// [`pubsub_channel`](Self::pubsub_channel) for a channel of partition `p` (known already:
    /// callers building several keys of one channel hash its name once).
    pub fn pubsub_channel_in(&self, p: usize, channel: &str) -> String {
        self.key_in(p, channel, "c")
    }

    /// The presence keys of `channel` (see `presence::redis`).
    pub fn presence(&self, p: usize, channel: &str) -> PresenceKeys {
        PresenceKeys {
            connections: self.key_in(p, channel, "pn"),
            users: self.key_in(p, channel, "pu"),
            names: self.key_in(p, channel, "pm"),
            order: self.key_in(p, channel, "pz"),
            count: self.key_in(p, channel, "pc"),
        }
    }

    /// Partition `p`'s archive stream.
    pub fn archive_stream(&self, p: usize) -> String {
        self.partition_key(p, "archive")
    }

    /// Partition `p`'s change feed (presence transitions and client events for the
    /// webhooks), in the slot of the presence keys whose scripts append to it.
    pub fn presence_feed(&self, p: usize) -> String {
        self.partition_key(p, "feed")
    }

    /// Who leads the change feed (a lease: the node id, expiring).
    pub fn feed_leader(&self) -> String {
        self.global_key("feed:leader")
    }

    /// The channels of partition `p` where `node` has presence entries.
    pub fn presence_node_index(&self, p: usize, node: &str) -> String {
        self.partition_key(p, &format!("pnode:{node}"))
    }

    /// The nodes with presence entries in partition `p`.
    pub fn presence_nodes(&self, p: usize) -> String {
        self.partition_key(p, "pnodes")
    }

    /// The sharded pub/sub channel of node commands (every node subscribes).
    pub fn control_channel(&self) -> String {
        self.partition_key(0, "ctl")
    }

    /// The sharded pub/sub channel where the broker instance `instance` hears the answers to
    /// its node commands (in partition 0, the control channel's slot).
    pub fn reply_channel(&self, instance: &str) -> String {
        self.partition_key(0, &format!("reply:{instance}"))
    }

    /// The recorded partition count (see `claim_layout`).
    pub fn layout(&self) -> String {
        self.global_key("partitions")
    }

    /// The node registry hash: node id → expiry, connections, capacity and URL.
    pub fn node_registry(&self) -> String {
        self.global_key("nodes")
    }

    /// `node`'s liveness key (expires when its heartbeats stop).
    pub fn node_alive(&self, node: &str) -> String {
        self.global_key(&format!("palive:{node}"))
    }

    /// A key of `channel` in partition `p`: `<prefix>:{<tag>}:<kind>:<channel>`.
    fn key_in(&self, p: usize, channel: &str, kind: &str) -> String {
        let head = &self.heads[p];
        let mut key = String::with_capacity(head.len() + kind.len() + channel.len() + 2);
        key.push_str(head);
        key.push(':');
        key.push_str(kind);
        key.push(':');
        key.push_str(channel);
        key
    }

    /// A key of partition `p`: `<prefix>:{<tag>}:<name>`.
    fn partition_key(&self, p: usize, name: &str) -> String {
        format!("{}:{name}", self.heads[p])
    }

    /// A key outside every partition: `<prefix>:<name>`.
    fn global_key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }
}

/// The presence keys of one channel, in its partition's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceKeys {
    /// `node|user` → connections.
    pub connections: String,
    /// user → connections across nodes.
    pub users: String,
    /// user → display name.
    pub names: String,
    /// The users in id order (a sorted set, for paging).
    pub order: String,
    /// The channel's connections in all.
    pub count: String,
}

/// A hash tag for partition `i` of `n` whose slot falls in the `i`-th of `n` equal ranges.
fn tag_for(i: usize, n: usize) -> (String, u16) {
    let low = (i as u32 * SLOTS / n as u32) as u16;
    let high = ((i as u32 + 1) * SLOTS / n as u32) as u16;
    let slot_of = |tag: &str| redis_keyslot(format!("{{{tag}}}").as_bytes());
    for k in 0..1_000_000u32 {
        let tag = if k == 0 {
            format!("{i}")
        } else {
            format!("{i}.{k}")
        };
        let slot = slot_of(&tag);
        if slot >= low && slot < high {
            return (tag, slot);
        }
    }
    let tag = format!("{i}");
    let slot = slot_of(&tag);
    (tag, slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_evenly_over_slot_ranges() {
        for n in [1, 3, 16, 64, 1024] {
            let ks = Keyspace::new("gw", n);
            assert_eq!(ks.partitions(), n);
            for p in 0..n {
                let slot = u32::from(ks.slot(p));
                assert!(
                    slot >= p as u32 * SLOTS / n as u32,
                    "n={n} p={p} slot={slot}"
                );
                assert!(slot < (p as u32 + 1) * SLOTS / n as u32, "n={n} p={p}");
            }
        }
    }

    #[test]
    fn every_key_of_a_channel_hashes_to_its_partition_slot() {
        let ks = Keyspace::new("gw", 16);
        for channel in ["room:lobby", "user:alice", "a{b}c", "{x}", "", "ünï:cödé"] {
            let p = ks.partition(channel);
            let slot = ks.slot(p);
            let presence = ks.presence(p, channel);
            let keys = [
                ks.meta(p, channel),
                ks.history(p, channel),
                ks.idem(p, channel),
                ks.idem_expiry(p, channel),
                ks.pubsub_channel(channel),
                presence.connections,
                presence.users,
                presence.names,
                presence.order,
                presence.count,
                ks.archive_stream(p),
                ks.presence_node_index(p, "n1"),
                ks.presence_nodes(p),
            ];
            for key in &keys {
                assert_eq!(redis_keyslot(key.as_bytes()), slot, "{key}");
            }
            let distinct: std::collections::HashSet<_> = keys.iter().collect();
            assert_eq!(distinct.len(), keys.len(), "{keys:?}");
        }
        assert_eq!(
            redis_keyslot(ks.reply_channel("x").as_bytes()),
            redis_keyslot(ks.control_channel().as_bytes())
        );
        assert!(ks.meta(0, "room:x").starts_with("gw:{"));
        assert_eq!(ks.node_registry(), "gw:nodes");
        assert_eq!(ks.layout(), "gw:partitions");
        assert_eq!(ks.node_alive("n1"), "gw:palive:n1");
    }

    #[test]
    fn channels_spread_over_partitions() {
        let ks = Keyspace::new("gw", 16);
        let mut counts = [0usize; 16];
        for i in 0..16_000 {
            counts[ks.partition(&format!("room:{i}"))] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
