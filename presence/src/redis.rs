//! Presence and the node registry in Redis, kept alive by TTL heartbeats.
//!
//! Presence counts connections per (node, user) in each channel (`<prefix>:{<tag>}:pn:<channel>`,
//! in the channel's partition, see [`Keyspace`]), with a per-user total across nodes (`pu`,
//! which makes the first-in / last-out answer one atomic script), display names (`pm`), the
//! users in id order (`pz`, a sorted set that pages by range) and the channel's connection
//! count (`pc`, for O(1) stats). Each node keeps, per partition, an index of the channels
//! where it has entries (`<prefix>:{<tag>}:pnode:<node>`; with the partition's set of nodes
//! that have entries, `pnodes`, in the same slot, so that one script keeps them all on a
//! Redis Cluster), and a liveness key (`<prefix>:palive:<node>`, expiring after three
//! heartbeat intervals). A live node's heartbeat finds nodes whose liveness key is gone and
//! removes their entries channel by channel; the script returns the users who thereby left,
//! exactly once, so that `leave` is pushed for each.
//!
//! The registry is one hash (`<prefix>:nodes`): node id → expiry, connections, capacity and
//! URL.

use crate::{
    Change, FeedEvent, FeedFilter, FeedKind, Member, NodeInfo, NodeRegistry, Presence,
    PresenceError, RegistryError, Stats,
};
use fanout::redis::Keyspace;
use fred::clients::Client;
use fred::interfaces::{HashesInterface, KeysInterface, SetsInterface};
use fred::types::Value;
use fred::types::scripts::Script;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

mod scripts;

use scripts::{
    ADD_LUA, ChangeCall, ChannelKeys, LEAD_LUA, LeadCall, PAGE_LUA, PageCall, REAP_LUA, REMOVE_LUA,
    RESTORE_LUA, ReapCall, STATS_LUA, StatsCall,
};

/// The change feed's consumer group, and its one consumer: whichever node leads reads as it,
/// so that what a previous leader read and did not acknowledge is read again.
const FEED_GROUP: &str = "hooks";
const FEED_CONSUMER: &str = "leader";
/// About how many events a partition's feed keeps (the scripts trim it too): past it, while
/// the receiver stays down, the oldest go.
const FEED_MAXLEN: i64 = 1_000_000;

fn unavailable(e: fred::error::Error) -> PresenceError {
    if fanout::redis::is_transient(&e) {
        PresenceError::Unavailable(e.to_string())
    } else {
        PresenceError::Backend(e.to_string())
    }
}

use fanout::util::unix_millis;

/// One of this node's entries as the node knows it: its connections and the user's name.
type OwnEntry = (u32, Option<String>);

/// [`Presence`] in Redis for one node of a cluster.
pub struct RedisPresence {
    client: Client,
    keys: Keyspace,
    node: String,
    heartbeat: Duration,
    add: Script,
    remove: Script,
    reap: Script,
    restore: Script,
    page: Script,
    stats: Script,
    lead: Script,
    /// The channels whose transitions go to the change feed (none: no feed).
    filter: Option<FeedFilter>,
    /// Per partition: the feed's consumer group exists, and what was read before (a previous
    /// leader's unacknowledged events, or this node's after a failure) has been read again.
    feed_state: Mutex<Vec<(bool, bool)>>,
    /// The partition the next read starts at (each read starts one further, so that a busy
    /// partition does not starve the others).
    feed_next: std::sync::atomic::AtomicUsize,
    /// This node's own entries, (channel, user) → (connections, name), to put back what
    /// Redis lost.
    own: Mutex<HashMap<(String, String), OwnEntry>>,
}

impl RedisPresence {
    /// Presence of node `node`, which calls [`Presence::heartbeat`] every `heartbeat`; the
    /// transitions of channels `filter` accepts go to the change feed. Entries left by an
    /// earlier process with the same node id are removed first.
    pub async fn start(
        client: Client,
        keys: Keyspace,
        node: &str,
        heartbeat: Duration,
        filter: Option<FeedFilter>,
    ) -> Result<(Self, Vec<Change>), PresenceError> {
        let partitions = keys.partitions();
        let presence = Self {
            lead: Script::from_lua(LEAD_LUA),
            filter,
            feed_state: Mutex::new(vec![(false, false); partitions]),
            feed_next: std::sync::atomic::AtomicUsize::new(0),
            client,
            keys,
            node: node.to_owned(),
            heartbeat,
            add: Script::from_lua(ADD_LUA),
            remove: Script::from_lua(REMOVE_LUA),
            reap: Script::from_lua(REAP_LUA),
            restore: Script::from_lua(RESTORE_LUA),
            page: Script::from_lua(PAGE_LUA),
            stats: Script::from_lua(STATS_LUA),
            own: Mutex::default(),
        };
        let departures = presence.reap_node(node).await?;
        presence.beat().await?;
        Ok((presence, departures))
    }

    /// The call of add.lua, remove.lua or restore.lua (`restore`: the count to put back) for
    /// `user` on `channel`, on this node.
    fn change_call<'a>(
        &'a self,
        channel: &'a str,
        user: &'a str,
        name: Option<&'a str>,
        restore: Option<u32>,
    ) -> ChangeCall<'a> {
        let p = self.keys.partition(channel);
        ChangeCall {
            keys: ChannelKeys::new(&self.keys, p, channel),
            node_index: self.node_key(p, &self.node),
            nodes: self.nodes_key(p),
            node: &self.node,
            user,
            name,
            channel,
            feed: self.keys.presence_feed(p),
            record: self.feeds(channel),
            restore,
        }
    }

    /// After anything that may have left events read and not acknowledged (a failed call, a
    /// lead lost), or the feed gone (Redis restarted empty: its groups with it): the next
    /// read checks the groups and reads what is pending first.
    fn forget_feed_progress(&self) {
        for state in self.feed_state.lock().iter_mut() {
            *state = (false, false);
        }
    }

    /// Whether `channel`'s transitions go to the change feed.
    fn feeds(&self, channel: &str) -> bool {
        self.filter.as_ref().is_some_and(|f| f(channel))
    }

    /// Reads partition `p`'s feed from `id` (`0`: what was read and not acknowledged; `>`:
    /// what nobody read yet).
    async fn read_feed(
        &self,
        p: usize,
        id: &str,
        max: usize,
    ) -> Result<Vec<FeedEvent>, PresenceError> {
        use fred::interfaces::StreamsInterface;
        use fred::types::streams::XReadResponse;
        let key = self.keys.presence_feed(p);
        let reply: Value = self
            .client
            .xreadgroup(
                FEED_GROUP,
                FEED_CONSUMER,
                Some(max as u64),
                None,
                false,
                &key,
                id,
            )
            .await
            .map_err(unavailable)?;
        if reply.is_null() {
            return Ok(Vec::new());
        }
        let response: XReadResponse<String, String, String, String> =
            reply.into_xread_response().map_err(unavailable)?;
        let entries = response.into_values().next().unwrap_or_default();
        Ok(entries
            .into_iter()
            .filter_map(|(entry, fields)| {
                let kind = FeedKind::parse(fields.get("k")?)?;
                Some(FeedEvent {
                    id: format!("{p}-{entry}"),
                    kind,
                    channel: fields.get("c")?.clone(),
                    user: fields.get("u").cloned(),
                    data: fields.get("d").cloned(),
                    time_ms: fields.get("t").and_then(|t| t.parse().ok()).unwrap_or(0),
                    partition: p,
                })
            })
            .collect())
    }

    /// Creates partition `p`'s feed and its consumer group (from the start: nothing recorded
    /// before is skipped).
    async fn create_feed_group(&self, p: usize) -> Result<(), PresenceError> {
        use fred::interfaces::StreamsInterface;
        let key = self.keys.presence_feed(p);
        let created: Result<Value, _> =
            self.client.xgroup_create(&key, FEED_GROUP, "0", true).await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    fn channel_keys(&self, channel: &str) -> ChannelKeys {
        ChannelKeys::new(&self.keys, self.keys.partition(channel), channel)
    }

    /// The channels of partition `p` where `node` has entries.
    fn node_key(&self, p: usize, node: &str) -> String {
        self.keys.presence_node_index(p, node)
    }

    fn alive_key(&self, node: &str) -> String {
        self.keys.node_alive(node)
    }

    /// The nodes with entries in partition `p`.
    fn nodes_key(&self, p: usize) -> String {
        self.keys.presence_nodes(p)
    }

    /// Refreshes this node's liveness key; returns whether it was still there.
    async fn beat(&self) -> Result<bool, PresenceError> {
        let ttl = (self.heartbeat * 3).as_millis() as i64;
        let previous: Option<String> = self
            .client
            .set(
                self.alive_key(&self.node),
                1,
                Some(fred::types::Expiration::PX(ttl)),
                None,
                true,
            )
            .await
            .map_err(unavailable)?;
        Ok(previous.is_some())
    }

    /// Puts this node's entries back; returns the users that thereby returned.
    async fn restore_own(&self) -> Result<Vec<Change>, PresenceError> {
        let own: Vec<((String, String), OwnEntry)> = self
            .own
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut joined = Vec::new();
        for ((channel, user), (count, name)) in own {
            let call = self.change_call(&channel, &user, name.as_deref(), Some(count));
            let returned: i64 = self
                .restore
                .evalsha_with_reload(&self.client, call.keys(), call.args())
                .await
                .map_err(unavailable)?;
            if ChangeCall::changed(returned) {
                joined.push(Change::Joined { channel, user });
            }
        }
        Ok(joined)
    }

    /// Removes every entry of `node`, partition by partition; returns who left.
    async fn reap_node(&self, node: &str) -> Result<Vec<Change>, PresenceError> {
        let mut departures = Vec::new();
        for p in 0..self.keys.partitions() {
            let node_key = self.node_key(p, node);
            let channels: Vec<String> = self.client.hkeys(&node_key).await.map_err(unavailable)?;
            for channel in channels {
                let call = ReapCall {
                    keys: ChannelKeys::new(&self.keys, p, &channel),
                    node_index: node_key.clone(),
                    node,
                    channel: &channel,
                    feed: self.keys.presence_feed(p),
                    record: self.feeds(&channel),
                };
                let gone: Vec<String> = self
                    .reap
                    .evalsha_with_reload(&self.client, call.keys(), call.args())
                    .await
                    .map_err(unavailable)?;
                departures.extend(gone.into_iter().map(|user| Change::Left {
                    channel: channel.clone(),
                    user,
                }));
            }
            let left: i64 = self.client.hlen(&node_key).await.map_err(unavailable)?;
            if left == 0 && node != self.node {
                let _: i64 = self
                    .client
                    .srem(self.nodes_key(p), node)
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(departures)
    }

    async fn change(
        &self,
        script: &Script,
        channel: &str,
        user: &str,
        name: Option<&str>,
    ) -> Result<bool, PresenceError> {
        let call = self.change_call(channel, user, name, None);
        let changed: i64 = script
            .evalsha_with_reload(&self.client, call.keys(), call.args())
            .await
            .map_err(unavailable)?;
        Ok(ChangeCall::changed(changed))
    }
}

#[async_trait::async_trait]
impl Presence for RedisPresence {
    async fn add(
        &self,
        channel: &str,
        user: &str,
        name: Option<&str>,
    ) -> Result<bool, PresenceError> {
        let first = self.change(&self.add, channel, user, name).await?;
        let mut own = self.own.lock();
        let entry = own
            .entry((channel.to_owned(), user.to_owned()))
            .or_insert((0, None));
        entry.0 += 1;
        if name.is_some() {
            entry.1 = name.map(str::to_owned);
        }
        Ok(first)
    }

    async fn remove(&self, channel: &str, user: &str) -> Result<bool, PresenceError> {
        let last = self.change(&self.remove, channel, user, None).await?;
        let mut own = self.own.lock();
        let key = (channel.to_owned(), user.to_owned());
        if let Some(entry) = own.get_mut(&key) {
            entry.0 -= 1;
            if entry.0 == 0 {
                own.remove(&key);
            }
        }
        Ok(last)
    }

    async fn members_page(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, PresenceError> {
        let call = PageCall {
            keys: self.channel_keys(channel),
            after,
            limit,
        };
        let flat: Vec<String> = self
            .page
            .evalsha_with_reload(&self.client, call.keys(), call.args())
            .await
            .map_err(unavailable)?;
        flat.chunks(3)
            .map(|entry| match entry {
                [user, conns, name] => Ok(Member {
                    user: user.clone(),
                    name: (!name.is_empty()).then(|| name.clone()),
                    conns: conns.parse().unwrap_or(0),
                }),
                _ => Err(PresenceError::Backend("presence page cut short".into())),
            })
            .collect()
    }

    async fn stats(&self, channel: &str) -> Result<Stats, PresenceError> {
        let call = StatsCall {
            keys: self.channel_keys(channel),
        };
        let (users, conns): (i64, i64) = self
            .stats
            .evalsha_with_reload(&self.client, call.keys(), ())
            .await
            .map_err(unavailable)?;
        Ok(Stats {
            users: users.max(0) as u64,
            conns: conns.max(0) as u64,
        })
    }

    async fn heartbeat(&self) -> Result<Vec<Change>, PresenceError> {
        let mut changes = Vec::new();
        if !self.beat().await? {
            // Our liveness key was gone: Redis lost its data, or we were taken for dead and
            // reaped. Put our entries back.
            changes = self.restore_own().await?;
        }
        // Every node with entries in any partition (one pipelined read).
        let pipeline = self.client.pipeline();
        for p in 0..self.keys.partitions() {
            let _: Result<(), _> = pipeline.smembers(self.nodes_key(p)).await;
        }
        let per_partition: Vec<Vec<String>> = pipeline.all().await.map_err(unavailable)?;
        let nodes: std::collections::BTreeSet<String> =
            per_partition.into_iter().flatten().collect();
        for node in nodes.into_iter().filter(|n| *n != self.node) {
            let alive: i64 = self
                .client
                .exists(self.alive_key(&node))
                .await
                .map_err(unavailable)?;
            if alive == 0 {
                tracing::info!(%node, "node stopped heartbeating: removing its presence");
                changes.extend(self.reap_node(&node).await?);
            }
        }
        Ok(changes)
    }

    async fn feed_client_event(
        &self,
        channel: &str,
        user: &str,
        data: &str,
    ) -> Result<(), PresenceError> {
        use fred::interfaces::StreamsInterface;
        if !self.feeds(channel) {
            return Ok(());
        }
        let p = self.keys.partition(channel);
        let time = fanout::util::unix_millis().to_string();
        let fields = vec![
            ("k", FeedKind::ClientEvent.name()),
            ("c", channel),
            ("u", user),
            ("d", data),
            ("t", time.as_str()),
        ];
        let _: Value = self
            .client
            .xadd(
                self.keys.presence_feed(p),
                false,
                ("MAXLEN", "~", FEED_MAXLEN),
                "*",
                fields,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn feed_lead(&self, lease: Duration) -> Result<bool, PresenceError> {
        let call = LeadCall {
            leader: self.keys.feed_leader(),
            node: &self.node,
            lease_ms: lease.as_millis() as u64,
        };
        let answer: Result<i64, _> = self
            .lead
            .evalsha_with_reload(&self.client, call.keys(), call.args())
            .await;
        let leads = answer.map(LeadCall::leads);
        if !matches!(leads, Ok(true)) {
            // Should it lead again, it first reads what was read and not acknowledged.
            self.forget_feed_progress();
        }
        leads.map_err(unavailable)
    }

    async fn feed_read(&self, max: usize) -> Result<Vec<FeedEvent>, PresenceError> {
        let read = self.read_partitions(max).await;
        if read.is_err() {
            // What the partitions read before the failure returned stays pending.
            self.forget_feed_progress();
        }
        read
    }

    async fn feed_ack(&self, events: &[FeedEvent]) -> Result<(), PresenceError> {
        let acked = self.ack(events).await;
        if acked.is_err() {
            self.forget_feed_progress();
        }
        acked
    }
}

impl RedisPresence {
    /// Up to `max` events, partition by partition from the one after the last read's start:
    /// per partition, what is pending first (until none is), then what is new.
    async fn read_partitions(&self, max: usize) -> Result<Vec<FeedEvent>, PresenceError> {
        let partitions = self.keys.partitions();
        let start = self
            .feed_next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % partitions;
        let mut events = Vec::new();
        for p in (start..partitions).chain(0..start) {
            if events.len() >= max {
                break;
            }
            let (grouped, caught_up) = self.feed_state.lock()[p];
            if !grouped {
                self.create_feed_group(p).await?;
                self.feed_state.lock()[p].0 = true;
            }
            let left = max - events.len();
            if !caught_up {
                let pending = self.read_feed(p, "0", left).await?;
                if !pending.is_empty() {
                    events.extend(pending);
                    continue;
                }
                self.feed_state.lock()[p].1 = true;
            }
            events.extend(self.read_feed(p, ">", left).await?);
        }
        Ok(events)
    }

    /// Acknowledges and deletes `events`, partition by partition.
    async fn ack(&self, events: &[FeedEvent]) -> Result<(), PresenceError> {
        use fred::interfaces::StreamsInterface;
        for p in 0..self.keys.partitions() {
            let prefix = format!("{p}-");
            let ids: Vec<String> = events
                .iter()
                .filter(|e| e.partition == p)
                .filter_map(|e| e.id.strip_prefix(&prefix).map(str::to_owned))
                .collect();
            if ids.is_empty() {
                continue;
            }
            let key = self.keys.presence_feed(p);
            let _: Value = self
                .client
                .xack(&key, FEED_GROUP, ids.clone())
                .await
                .map_err(unavailable)?;
            let _: Value = self.client.xdel(&key, ids).await.map_err(unavailable)?;
        }
        Ok(())
    }
}

/// [`NodeRegistry`] in Redis: one hash of live nodes, each entry with its own expiry.
pub struct RedisRegistry {
    client: Client,
    key: String,
    ttl: Duration,
}

impl RedisRegistry {
    /// A registry whose entries expire `ttl` after their last heartbeat.
    pub fn new(client: Client, keys: &Keyspace, ttl: Duration) -> Self {
        Self {
            client,
            key: keys.node_registry(),
            ttl,
        }
    }
}

fn registry_error(e: fred::error::Error) -> RegistryError {
    match unavailable(e) {
        PresenceError::Unavailable(m) => RegistryError::Unavailable(m),
        PresenceError::Backend(m) => RegistryError::Backend(m),
    }
}

#[async_trait::async_trait]
impl NodeRegistry for RedisRegistry {
    async fn heartbeat(&self, node: NodeInfo) -> Result<(), RegistryError> {
        let expires = unix_millis() + self.ttl.as_millis() as u64;
        let value = format!(
            "{expires} {} {} {}",
            node.connections, node.capacity, node.url
        );
        let result: Result<(), _> = self.client.hset(&self.key, (node.id, value)).await;
        result.map_err(registry_error)
    }

    async fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        let result: Result<(), _> = self.client.hdel(&self.key, id).await;
        result.map_err(registry_error)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let entries: HashMap<String, String> = self
            .client
            .hgetall(&self.key)
            .await
            .map_err(registry_error)?;
        let now = unix_millis();
        let mut live = Vec::new();
        let mut expired = Vec::new();
        for (id, value) in entries {
            let mut parts = value.splitn(4, ' ');
            let expires = parts.next().and_then(|v| v.parse::<u64>().ok());
            let connections = parts.next().and_then(|v| v.parse::<u64>().ok());
            // "<expires> <connections> <capacity> <url>"; a node of an older build writes no
            // capacity.
            let (capacity, url) = match (parts.next(), parts.next()) {
                (Some(c), Some(url)) => (c.parse::<u64>().ok(), Some(url.to_owned())),
                (Some(url), None) => (Some(0), Some(url.to_owned())),
                _ => (None, None),
            };
            match (expires, connections, capacity, url) {
                (Some(e), Some(connections), Some(capacity), Some(url)) if e > now => {
                    live.push(NodeInfo {
                        id,
                        url,
                        connections,
                        capacity,
                    })
                }
                _ => expired.push(id),
            }
        }
        if !expired.is_empty() {
            let _: Result<Value, _> = self.client.hdel(&self.key, expired).await;
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }
}
