//! The clustered broker: offsets, history and dedup in Redis, fan-out over Redis pub/sub.
//!
//! - **Publish** is one round trip: a Lua script on the channel's hash-tagged keys does the
//!   dedup check, the offset increment, the append to the channel's history stream (bounded
//!   by count, expiring with the history TTL) and the PUBLISH of one MessagePack envelope.
//! - **Subscribe per node**: the node SSUBSCRIBEs (sharded pub/sub) on a channel's first local
//!   subscriber and SUNSUBSCRIBEs after its last, on a dedicated subscriber client (one
//!   connection per Redis primary on a Redis Cluster); each envelope is decoded once per node.
//! - **One layout for one Redis and a Redis Cluster** ([`Keyspace`]): channels map onto hash-
//!   tagged partitions, so a script touches one slot. On a cluster the node watches which
//!   primary owns each partition; after a slot move or a failover it subscribes the
//!   partition's channels again and heals them by offset.
//! - **Gap healing in the node**: a [`Track`] per subscribed channel remembers the last offset
//!   handed to the dispatcher. An envelope after a gap, a reconnect, a lagging receiver or a
//!   periodic position check (the channel's top offset against the node's: every few seconds
//!   for channels with recent traffic, once a sweep period for quiet ones) makes the node read
//!   the missing range from the stream and deliver it in order; what the stream no longer holds
//!   is reported with [`Dispatcher::lost`].

mod archiver;
mod envelope;
mod keyspace;
mod subscriptions;
mod track;

pub use keyspace::{Keyspace, MAX_PARTITIONS};

use crate::archive::{Archive, ArchiveStats, ArchiverConfig, complete_page_waiting};
use crate::broker::{
    Broker, BrokerError, CommandReply, ControlEvent, DeliveryStats, Dispatcher, HistoryPage,
    HistoryQuery, NodeCommand, PublishOutcome, PublishRequest,
};
use archiver::StreamArchiver;
use bytes::Bytes;
use envelope::Envelope;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, ListInterface, PubsubInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::Value;
use fred::types::scripts::Script;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use subscriptions::Subscriptions;
use track::Track;

const PUBLISH_LUA: &str = include_str!("publish.lua");
const HISTORY_LUA: &str = include_str!("history.lua");
const REWIND_LUA: &str = include_str!("rewind.lua");

/// How long a recovery waits for the archive when its range is in neither recent history nor
/// the archive while archivers are still writing ([`complete_page_waiting`]).
const ARCHIVE_RACE_WAIT: Duration = Duration::from_secs(2);
/// Most messages one gap-healing read asks for.
const HEAL_BATCH: usize = 1000;
/// How long a node command waits for every node's answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Channels per pipelined position check.
const POSITION_BATCH: usize = 500;
/// Channels per SSUBSCRIBE when subscribing again.
const RESUBSCRIBE_BATCH: usize = 500;
/// How often a node on a Redis Cluster re-reads the slot map.
const SLOT_CHECK: Duration = Duration::from_secs(1);

/// Decodes a pub/sub envelope as a node does on receipt (for fuzzing): `Err` when it is not
/// well-formed. A publication that decodes must re-encode to bytes that decode to the same
/// publication: anything else panics (the fuzzer's finding).
#[doc(hidden)]
pub fn check_envelope(raw: &[u8]) -> Result<(), String> {
    let raw = bytes::Bytes::copy_from_slice(raw);
    match envelope::decode(&raw).map_err(|e| e.to_string())? {
        envelope::Envelope::Publication(p) => {
            let encoded = envelope::publication(&p);
            let again = envelope::decode(&encoded)
                .unwrap_or_else(|e| panic!("a re-encoded publication does not decode: {e}; {p:?}"));
            assert_eq!(again, envelope::Envelope::Publication(p));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Settings of the Redis broker.
#[derive(Debug, Clone)]
pub struct RedisBrokerConfig {
    /// Key names (prefix and partitions).
    pub keyspace: Keyspace,
    /// Most messages kept per channel.
    pub history_size: usize,
    /// Longest time a message stays in history.
    pub history_ttl: Duration,
    /// How long a channel's offset and epoch outlive its last publish.
    pub meta_ttl: Duration,
    /// How long an idempotency key is remembered.
    pub dedup_window: Duration,
    /// Most idempotency keys remembered per channel.
    pub dedup_max_keys: usize,
    /// How often the node compares the positions of its subscribed channels that had
    /// traffic lately (within the sweep period) with Redis.
    pub position_check_interval: Duration,
    /// The period over which every subscribed channel, quiet ones too, is compared once (a
    /// slice of them at each check).
    pub position_sweep_interval: Duration,
}

/// The archive of a Redis broker: the database, and this node's consumer of the archive
/// stream.
pub struct RedisArchive {
    /// The database (PostgreSQL: every node shares it).
    pub archive: Arc<dyn Archive>,
    /// Batching and retry settings; `capacity` bounds the archive stream.
    pub config: ArchiverConfig,
    /// This node's consumer name in the `archivers` group (its node id).
    pub consumer: String,
}

/// Connection settings for [`connect`].
#[derive(Debug, Clone)]
pub struct RedisConnectOptions {
    /// Longest a command may take before it fails as unavailable.
    pub command_timeout: Duration,
    /// Capacity of the pub/sub receiver (fred's default is 32): a node that falls this far
    /// behind lags, counts it and heals.
    pub pubsub_capacity: usize,
}

impl Default for RedisConnectOptions {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(1),
            pubsub_capacity: 4096,
        }
    }
}

/// Opens the two connections a node needs: commands, and a dedicated pub/sub subscriber.
/// Both reconnect by themselves (exponential backoff with jitter) after a failure.
pub async fn connect(
    url: &str,
    options: &RedisConnectOptions,
) -> Result<(Client, SubscriberClient), BrokerError> {
    let config = Config::from_url(url).map_err(|e| BrokerError::Backend(e.to_string()))?;
    let clustered = config.server.is_clustered();
    let mut builder = Builder::from_config(config);
    let timeout = options.command_timeout;
    let capacity = options.pubsub_capacity;
    builder
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
            p.broadcast_channel_capacity = capacity;
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            // One attempt fails fast when Redis is down; a Redis Cluster also redirects
            // (MOVED/ASK) during slot moves, which counts as an attempt. The command timeout
            // bounds the whole.
            c.max_command_attempts = if clustered { 4 } else { 1 };
            c.max_redirections = 8;
            c.unresponsive.max_timeout = Some(Duration::from_secs(3));
            c.unresponsive.interval = Duration::from_millis(500);
        })
        .set_policy({
            let mut policy = ReconnectPolicy::new_exponential(0, 100, 5_000, 2);
            policy.set_jitter(200);
            policy
        });
    let client = builder.build().map_err(unavailable)?;
    let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
    client.init().await.map_err(unavailable)?;
    subscriber.init().await.map_err(unavailable)?;
    Ok((client, subscriber))
}

/// Records the key layout (the partition count) in Redis on the first node's start, and
/// refuses another one: nodes with different counts would look for a channel in different
/// places.
pub async fn claim_layout(client: &Client, keyspace: &Keyspace) -> Result<(), BrokerError> {
    let key = keyspace.global_key("partitions");
    let wanted = keyspace.partitions().to_string();
    // SET NX GET: records the count unless one is there, and answers the one there.
    let current: Option<String> = client
        .set(
            &key,
            wanted.as_str(),
            None,
            Some(fred::types::SetOptions::NX),
            true,
        )
        .await
        .map_err(unavailable)?;
    match current {
        Some(c) if c != wanted => Err(BrokerError::Backend(format!(
            "the nodes on this Redis (prefix {:?}) use {c} partitions, this node {wanted}: \
             give every node the same --redis-partitions",
            keyspace.prefix()
        ))),
        _ => Ok(()),
    }
}

/// Whether a Redis error is passing: Redis unreachable or slow, or a Redis Cluster mid-move
/// or mid-failover (MOVED/ASK followed too often, TRYAGAIN on a script whose keys are half
/// migrated, CLUSTERDOWN, a replica still loading). The caller may retry the same command.
pub fn is_transient(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    let details = e.details();
    matches!(
        e.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Routing
            | ErrorKind::Cluster
    ) || ["TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK", "LOADING", "MASTERDOWN"]
        .iter()
        .any(|p| details.starts_with(p))
        // fred's word for a command redirected or retried past its attempts.
        || details.contains("Too many failed write attempts")
        // fred's word (an `Unknown` error) for a command it had no live connection to write
        // to: Redis went away under it.
        || details.contains("Failed to route command")
}

fn unavailable(e: fred::error::Error) -> BrokerError {
    if is_transient(&e) {
        BrokerError::Unavailable(e.to_string())
    } else {
        BrokerError::Backend(e.to_string())
    }
}

/// The bytes of a bulk string reply or pub/sub message, without copying them.
fn value_bytes(value: Value) -> Option<Bytes> {
    match value {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.into_inner()),
        _ => None,
    }
}

fn new_epoch() -> String {
    let n: u64 = rand::random();
    format!("{n:016x}")
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The counters behind [`DeliveryStats`], updated from several tasks.
#[derive(Debug, Default)]
pub(crate) struct RedisBrokerStats {
    /// Gaps found (an envelope after a missing offset, a position check behind the top).
    pub gaps: AtomicU64,
    /// Publications delivered from the stream by healing.
    pub healed: AtomicU64,
    /// Times the subscriber fell behind (fred's receiver lagged).
    pub lagged: AtomicU64,
    /// Channels whose subscribers were told to resubscribe (history no longer held a gap).
    pub lost: AtomicU64,
    /// Envelopes that could not be decoded.
    pub bad_envelopes: AtomicU64,
    /// Partitions found on another Redis primary (slot moves, failovers) and resubscribed.
    pub moved: AtomicU64,
}

/// What one run of the publish script gave.
enum Published {
    /// Accepted (or a duplicate).
    Done(PublishOutcome),
    /// Redis has no state for the channel: resume its archived position and run again.
    NoState,
}

/// [`Broker`] on Redis for many nodes.
pub struct RedisBroker {
    me: Weak<RedisBroker>,
    client: Client,
    subscriber: SubscriberClient,
    /// Channel subscriptions, batched.
    subscriptions: Subscriptions,
    config: RedisBrokerConfig,
    dispatcher: Arc<dyn Dispatcher>,
    publish_script: Script,
    history_script: Script,
    rewind_script: Script,
    tracks: RwLock<HashMap<Arc<str>, Arc<Mutex<Track>>>>,
    healthy: AtomicBool,
    control_channel: String,
    stats: RedisBrokerStats,
    archive: Option<(Arc<dyn Archive>, Arc<ArchiveStats>, usize)>,
    /// Partitions with archived publishes the archiver has not read yet.
    hot: Arc<archiver::HotPartitions>,
    /// On a Redis Cluster, each partition's primary when the node last subscribed there.
    owners: Mutex<Vec<Option<String>>>,
    /// Sweep slices handed to new tracks, round robin.
    next_slice: AtomicU32,
    /// Short-interval position checks so far.
    check_round: AtomicU32,
}

/// Which channels a position check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckScope {
    /// Every subscribed channel (after a reconnect, a slot move or a lagging receiver).
    All,
    /// The periodic check: channels with recent traffic or an open gap, and one slice of
    /// the quiet ones.
    Due,
}

impl RedisBroker {
    /// Starts the broker on connections from [`connect`]: subscribes to the control channel
    /// and spawns the reader, the reconnect watcher and the position check.
    pub async fn start(
        client: Client,
        subscriber: SubscriberClient,
        config: RedisBrokerConfig,
        dispatcher: Arc<dyn Dispatcher>,
        archive: Option<RedisArchive>,
    ) -> Result<Arc<Self>, BrokerError> {
        let control_channel = config.keyspace.control_channel();
        let archive_keys: Vec<String> = (0..config.keyspace.partitions())
            .map(|p| config.keyspace.partition_key(p, "archive"))
            .collect();
        let hot = Arc::new(archiver::HotPartitions::new(archive_keys.len()));
        let stats = Arc::new(ArchiveStats::default());
        let broker = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            client,
            subscriptions: Subscriptions::start(subscriber.clone()),
            subscriber,
            dispatcher,
            publish_script: Script::from_lua(PUBLISH_LUA),
            history_script: Script::from_lua(HISTORY_LUA),
            rewind_script: Script::from_lua(REWIND_LUA),
            tracks: RwLock::default(),
            healthy: AtomicBool::new(true),
            control_channel,
            stats: RedisBrokerStats::default(),
            archive: archive
                .as_ref()
                .map(|a| (a.archive.clone(), stats.clone(), a.config.capacity)),
            hot: hot.clone(),
            owners: Mutex::default(),
            next_slice: AtomicU32::new(0),
            check_round: AtomicU32::new(0),
            config,
        });
        broker
            .publish_script
            .load(&broker.client)
            .await
            .map_err(unavailable)?;
        broker
            .history_script
            .load(&broker.client)
            .await
            .map_err(unavailable)?;
        broker
            .rewind_script
            .load(&broker.client)
            .await
            .map_err(unavailable)?;
        let messages = broker.subscriber.message_rx();
        let reconnects = broker.subscriber.reconnect_rx();
        broker
            .subscriber
            .ssubscribe(broker.control_channel.clone())
            .await
            .map_err(unavailable)?;
        if broker.subscriber.is_clustered() {
            *broker.owners.lock() = broker.partition_owners();
        }
        let weak = Arc::downgrade(&broker);
        tokio::spawn(read_loop(weak.clone(), messages));
        tokio::spawn(reconnect_loop(weak.clone(), reconnects));
        tokio::spawn(check_loop(weak));
        if let Some(archive) = archive {
            let archiver = StreamArchiver {
                client: broker.client.clone(),
                keyspace: broker.config.keyspace.clone(),
                keys: archive_keys,
                hot,
                consumer: archive.consumer,
                archive: archive.archive,
                config: archive.config,
                stats,
            };
            tokio::spawn(archiver.run());
        }
        Ok(broker)
    }

    fn me(&self) -> Option<Arc<Self>> {
        self.me.upgrade()
    }

    fn key(&self, channel: &str, kind: &str) -> String {
        // The partition's hash tag keeps a channel's keys in one slot (one script on a Redis
        // Cluster), with its partition's archive stream.
        self.config.keyspace.channel_key(channel, kind)
    }

    /// One run of the publish script; `resume` is the channel's archived position when an
    /// earlier run found no state for it.
    async fn publish_once(
        &self,
        request: &PublishRequest,
        resume: Option<&(Arc<str>, u64)>,
    ) -> Result<Published, BrokerError> {
        let channel = &request.channel;
        let archived = request.archive && self.archive.is_some();
        let (epoch, base, ask) = match resume {
            Some((epoch, base)) => (epoch.to_string(), *base, false),
            None => (new_epoch(), 0, self.archive.is_some()),
        };
        let flag = |on: bool| Value::from(if on { "1" } else { "0" });
        let args: Vec<Value> = vec![
            self.pubsub_channel(channel).into(),
            (**channel).into(),
            (*request.from).into(),
            Value::Bytes(Bytes::copy_from_slice(&[request.data.tag()])),
            Value::Bytes(request.data.bytes().clone()),
            (unix_millis() as i64).into(),
            request.idem.clone().unwrap_or_default().into(),
            epoch.into(),
            (self.config.history_size as i64).into(),
            (self.config.history_ttl.as_secs().max(1) as i64).into(),
            (self.config.meta_ttl.as_secs().max(1) as i64).into(),
            (self.config.dedup_window.as_millis() as i64).into(),
            (self.config.dedup_max_keys as i64).into(),
            flag(archived),
            (self.archive.as_ref().map_or(0, |(_, _, cap)| *cap) as i64).into(),
            flag(ask),
            (base as i64).into(),
        ];
        let keyspace = &self.config.keyspace;
        let p = keyspace.partition(channel);
        let keys = vec![
            keyspace.key_in(p, channel, "m"),
            keyspace.key_in(p, channel, "h"),
            keyspace.key_in(p, channel, "i"),
            keyspace.key_in(p, channel, "iz"),
            keyspace.partition_key(p, "archive"),
        ];
        // Without a connection nothing is sent: the publish is refused for sure. (fred would
        // also queue the command for a reconnection within the timeout, after which nobody
        // could say whether it ran.)
        if !self.client.is_connected() {
            let e = BrokerError::Unavailable("not connected to Redis; nothing was sent".into());
            self.mark(Err(&e));
            return Err(e);
        }
        let result: Result<Vec<Value>, _> = self
            .publish_script
            .evalsha_with_reload(&self.client, keys, args)
            .await;
        // Sent and unanswered (a frozen or slow Redis, a connection broken mid-request): the
        // script may still run. The client is told so, and retries with its `idem`.
        let result = result.map_err(|e| match unavailable(e) {
            BrokerError::Unavailable(why) => BrokerError::OutcomeUnknown(why),
            other => other,
        });
        self.mark(result.as_ref().map(|_| ()));
        let values = result?;
        if archived {
            self.hot.mark(p);
        }
        let (status, offset, epoch) = match values.as_slice() {
            [s, o, e] => (
                s.as_u64(),
                o.as_u64(),
                e.as_bytes_str().map(|s| Arc::<str>::from(&*s)),
            ),
            _ => (None, None, None),
        };
        let (Some(status), Some(offset), Some(epoch)) = (status, offset, epoch) else {
            return Err(BrokerError::Backend(
                "publish script: unexpected reply".into(),
            ));
        };
        match status {
            0 | 1 => Ok(Published::Done(PublishOutcome {
                offset,
                epoch,
                duplicate: status == 1,
            })),
            3 => Ok(Published::NoState),
            4 => Err(BrokerError::Unavailable(
                "the archive stream is full (database slow or down); retry later".into(),
            )),
            _ => Err(BrokerError::DedupFull),
        }
    }

    /// A channel's archived position, to resume it when Redis has no state for it.
    async fn archived_position(&self, channel: &str) -> (Arc<str>, u64) {
        let archive = self.archive.as_ref().map(|(a, _, _)| a.clone());
        // With the database down too, the channel starts a new epoch rather than refuse
        // publishes: subscribers see the epoch change and reload (availability first).
        let position = match archive {
            Some(archive) => archive.position(channel).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, %channel, "archived position unreadable; new epoch");
                None
            }),
            None => None,
        };
        match position {
            Some(p) => (p.epoch, p.offset),
            None => (new_epoch().into(), 0),
        }
    }

    fn pubsub_channel(&self, channel: &str) -> String {
        self.config.keyspace.pubsub_channel(channel)
    }

    /// On a Redis Cluster: the primary that owns each partition's slot, as the subscriber
    /// client last learned it.
    fn partition_owners(&self) -> Vec<Option<String>> {
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
    /// `partitions` (all of them when `None`), and to the control channel with partition 0;
    /// returns whether every subscription went through.
    async fn resubscribe(&self, partitions: Option<&[usize]>) -> bool {
        let keyspace = &self.config.keyspace;
        let mut groups: Vec<Vec<String>> = vec![Vec::new(); keyspace.partitions()];
        groups[0].push(self.control_channel.clone());
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
    /// changed partitions), checks the changed partitions' channels for lost writes, then
    /// heals every channel. Returns false when a subscription failed (call again).
    async fn resync(self: &Arc<Self>, reconnected: bool) -> bool {
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
        if !reconnected && changed.is_empty() {
            return true;
        }
        if !changed.is_empty() {
            tracing::info!(partitions = ?changed, "partitions on another Redis primary; resubscribing");
            self.stats
                .moved
                .fetch_add(changed.len() as u64, Ordering::Relaxed);
        }
        let subscribed = if reconnected {
            self.resubscribe(None).await
        } else {
            self.resubscribe(Some(&changed)).await
        };
        if !subscribed {
            return false;
        }
        *self.owners.lock() = now;
        let suspects: Vec<(Arc<str>, Arc<Mutex<Track>>)> = self
            .tracks
            .read()
            .iter()
            .filter(|(c, _)| changed.contains(&self.config.keyspace.partition(c)))
            .map(|(c, t)| (c.clone(), t.clone()))
            .collect();
        for (channel, track) in suspects {
            self.verify(&channel, &track).await;
        }
        self.check_positions(CheckScope::All).await;
        true
    }

    /// Checks that Redis still holds the publication this node delivered last on `channel`
    /// (after a failover): if its offset is now missing or another publication's, Redis lost
    /// acknowledged writes, and the channel starts a new epoch; the position check that
    /// follows finds the new epoch and tells subscribers to reload.
    async fn verify(&self, channel: &str, track: &Mutex<Track>) {
        let (epoch, last, mark) = {
            let t = track.lock();
            (t.epoch.clone(), t.last, t.mark)
        };
        let (Some(epoch), Some(mark)) = (epoch, mark) else {
            return;
        };
        let Ok(page) = self.read(channel, Some(last - 1), None, 1).await else {
            return;
        };
        if page.epoch != epoch {
            return;
        }
        let lost = page.offset < last
            || page
                .publications
                .first()
                .is_some_and(|p| p.offset == last && track::fingerprint(p) != mark);
        if lost {
            self.rewind(channel, &epoch, last.max(page.offset)).await;
        }
    }

    fn mark(&self, result: Result<(), &BrokerError>) {
        let ok = !matches!(
            result,
            Err(BrokerError::Unavailable(_) | BrokerError::OutcomeUnknown(_))
        );
        self.healthy.store(ok, Ordering::Relaxed);
    }

    /// Reads a channel's position and history through the history script.
    async fn read(
        &self,
        channel: &str,
        since: Option<u64>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let oldest = unix_millis().saturating_sub(self.config.history_ttl.as_millis() as u64);
        let mut resume: Option<(Arc<str>, u64)> = None;
        let values = loop {
            let (epoch, base, ask) = match &resume {
                Some((epoch, base)) => (epoch.to_string(), *base, "0"),
                None => (
                    new_epoch(),
                    0,
                    if self.archive.is_some() { "1" } else { "0" },
                ),
            };
            let args: Vec<Value> = vec![
                since.map(|s| s.to_string()).unwrap_or_default().into(),
                (limit as i64).into(),
                epoch.into(),
                (self.config.meta_ttl.as_secs().max(1) as i64).into(),
                (oldest as i64).into(),
                before.map(|b| b.to_string()).unwrap_or_default().into(),
                ask.into(),
                (base as i64).into(),
            ];
            let result: Result<Vec<Value>, _> = self
                .history_script
                .evalsha_with_reload(
                    &self.client,
                    vec![self.key(channel, "m"), self.key(channel, "h")],
                    args,
                )
                .await;
            let result = result.map_err(unavailable);
            self.mark(result.as_ref().map(|_| ()));
            let values = result?;
            if resume.is_none() && values.first().and_then(|v| v.as_i64()) == Some(-1) {
                // No state in Redis: resume the channel's archived epoch and offset.
                resume = Some(self.archived_position(channel).await);
                continue;
            }
            break values;
        };
        let mut values = values.into_iter();
        let offset = values
            .next()
            .and_then(|v| v.as_u64())
            .ok_or_else(|| BrokerError::Backend("history script: no offset".into()))?;
        let epoch: Arc<str> = values
            .next()
            .and_then(|v| v.as_bytes_str().map(|s| s.to_string()))
            .ok_or_else(|| BrokerError::Backend("history script: no epoch".into()))?
            .into();
        let mut publications = Vec::new();
        for value in values {
            let raw = value_bytes(value)
                .ok_or_else(|| BrokerError::Backend("history script: bad entry".into()))?;
            match envelope::decode(&raw) {
                Ok(Envelope::Publication(p)) => publications.push(Arc::new(p)),
                _ => {
                    self.stats.bad_envelopes.fetch_add(1, Ordering::Relaxed);
                    return Err(BrokerError::Backend("history holds a bad entry".into()));
                }
            }
        }
        Ok(HistoryPage {
            publications,
            offset,
            epoch,
        })
    }

    fn track(&self, channel: &str) -> Option<Arc<Mutex<Track>>> {
        self.tracks.read().get(channel).cloned()
    }

    /// Hands what an envelope carries to the dispatcher.
    fn on_envelope(self: &Arc<Self>, raw: Bytes) {
        match envelope::decode(&raw) {
            Ok(Envelope::Publication(p)) => {
                let Some(track) = self.track(&p.channel) else {
                    return;
                };
                let channel = p.channel.clone();
                let wants_heal = track
                    .lock()
                    .offer(Arc::new(p), &*self.dispatcher, &self.stats);
                if wants_heal {
                    self.spawn_heal(channel, track, None, false);
                }
            }
            Ok(Envelope::Control(event)) => self.dispatcher.dispatch_control(&event),
            Ok(Envelope::Command { request, command }) => {
                let reply = self
                    .dispatcher
                    .dispatch_command(&command)
                    .to_json()
                    .to_string();
                let broker = self.clone();
                tokio::spawn(async move {
                    let key = broker
                        .config
                        .keyspace
                        .global_key(&format!("reply:{request}"));
                    let pushed: Result<(), _> = broker.client.rpush(&key, reply).await;
                    let expire: Result<(), _> = broker.client.expire(&key, 30, None).await;
                    if let Err(e) = pushed.and(expire) {
                        tracing::warn!(error = %e, "node command reply not sent");
                    }
                });
            }
            Err(e) => {
                self.stats.bad_envelopes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "undecodable envelope dropped");
            }
        }
    }

    /// Heals `channel` in the background (the track's `healing` flag is already set) until
    /// nothing is held back and `upto` is delivered, retrying while Redis is unreachable.
    fn spawn_heal(
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
                if !t.needs(None) {
                    t.healing = false;
                    break;
                }
            }
        });
    }

    /// Reads from the stream until the track has delivered everything up to `upto` (or up to
    /// the gap it holds), reporting what the stream no longer has. With `force` it reads at
    /// least once (the channel's epoch may have changed).
    async fn heal(
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
                if !force && !t.needs(upto) {
                    return Ok(());
                }
                t.last
            };
            force = false;
            let page = self.read(channel, Some(since), None, HEAL_BATCH).await?;
            let complete = page.publications.len() < HEAL_BATCH;
            let mut t = track.lock();
            t.absorb(page, complete, &*self.dispatcher, &self.stats);
        }
    }

    /// Starts a new epoch for a channel whose offset went backwards below `last` in `epoch`
    /// (see rewind.lua); returns whether the channel's epoch is no longer `epoch`.
    async fn rewind(&self, channel: &str, epoch: &str, last: u64) -> bool {
        tracing::warn!(
            %channel, %epoch, last,
            "the channel's offset went backwards in Redis (a failover lost acknowledged \
             writes): new epoch, subscribers reload"
        );
        let keys = vec![
            self.key(channel, "m"),
            self.key(channel, "h"),
            self.key(channel, "i"),
            self.key(channel, "iz"),
        ];
        let args: Vec<Value> = vec![
            epoch.into(),
            (last as i64).into(),
            new_epoch().into(),
            (self.config.meta_ttl.as_secs().max(1) as i64).into(),
        ];
        let done: Result<i64, _> = self
            .rewind_script
            .evalsha_with_reload(&self.client, keys, args)
            .await;
        match done {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, %channel, "rewinding failed; retried at the next check");
                false
            }
        }
    }

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
    async fn check_positions(self: &Arc<Self>, scope: CheckScope) {
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
                let _: Result<(), _> = fred::interfaces::HashesInterface::hmget(
                    &pipeline,
                    self.key(channel, "m"),
                    vec!["e", "o"],
                )
                .await;
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

async fn read_loop(
    broker: Weak<RedisBroker>,
    mut rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let message = rx.recv().await;
        let Some(broker) = broker.upgrade() else {
            break;
        };
        match message {
            Ok(message) => match value_bytes(message.value) {
                Some(raw) => broker.on_envelope(raw),
                None => {
                    broker.stats.bad_envelopes.fetch_add(1, Ordering::Relaxed);
                }
            },
            Err(RecvError::Lagged(n)) => {
                broker.stats.lagged.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(missed = n, "pub/sub receiver lagged; healing every channel");
                broker.check_positions(CheckScope::All).await;
            }
            Err(RecvError::Closed) => break,
        }
    }
}

async fn reconnect_loop(
    broker: Weak<RedisBroker>,
    mut rx: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
) {
    while rx.recv().await.is_ok() {
        let Some(broker) = broker.upgrade() else {
            break;
        };
        tracing::info!("redis subscriber reconnected; subscribing again and healing gaps");
        // Subscribe again to every followed channel (on a cluster, on whichever primary owns
        // each partition now), retrying until it went through, then heal what was missed.
        let mut delay = Duration::from_millis(100);
        while !broker.resync(true).await {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

async fn check_loop(broker: Weak<RedisBroker>) {
    let interval = match broker.upgrade() {
        Some(b) => b.config.position_check_interval,
        None => return,
    };
    let mut last_check = Instant::now();
    let mut last_slots = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(broker) = broker.upgrade() else {
            break;
        };
        let ping: Result<(), _> = broker.client.ping(None).await;
        broker.healthy.store(ping.is_ok(), Ordering::Relaxed);
        if broker.subscriber.is_clustered() && last_slots.elapsed() >= SLOT_CHECK {
            last_slots = Instant::now();
            broker.resync(false).await;
        }
        if ping.is_ok() && last_check.elapsed() >= interval {
            last_check = Instant::now();
            broker.check_positions(CheckScope::Due).await;
        }
    }
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        let mut resume: Option<(Arc<str>, u64)> = None;
        loop {
            let outcome = self.publish_once(&request, resume.as_ref()).await?;
            match outcome {
                Published::Done(outcome) => return Ok(outcome),
                Published::NoState if resume.is_none() => {
                    resume = Some(self.archived_position(&request.channel).await);
                }
                Published::NoState => {
                    return Err(BrokerError::Backend(
                        "publish script: no state twice".into(),
                    ));
                }
            }
        }
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        let query = query.clamped();
        let page = self
            .read(channel, query.since, query.before, query.limit)
            .await?;
        // The barrier: on a subscribed channel, deliver everything up to the page's offset
        // before answering.
        if let Some(track) = self.track(channel) {
            let moved = track.lock().epoch.as_ref() != Some(&page.epoch);
            self.heal(channel, &track, Some(page.offset), moved).await?;
        }
        match &self.archive {
            Some((archive, stats, _)) => complete_page_waiting(
                archive.as_ref(),
                channel,
                query,
                page,
                || stats.pending.load(Ordering::Relaxed) > 0,
                ARCHIVE_RACE_WAIT,
            )
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string())),
            None => Ok(page),
        }
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let slice = self.next_slice.fetch_add(1, Ordering::Relaxed);
        let track = Arc::new(Mutex::new(Track::new(channel.into(), slice)));
        self.tracks.write().insert(channel.into(), track.clone());
        let keyspace = &self.config.keyspace;
        let partition = keyspace.partition(channel);
        let subscribed = self
            .subscriptions
            .subscribe(partition, keyspace.pubsub_channel_in(partition, channel))
            .await
            .map_err(unavailable);
        if let Err(e) = subscribed {
            self.mark(Err(&e));
            self.tracks.write().remove(channel);
            return Err(e);
        }
        // The subscription is live: the channel's position now is where delivery starts.
        match self.read(channel, None, None, 0).await {
            Ok(page) => {
                let gap = track
                    .lock()
                    .start(&page.epoch, page.offset, &*self.dispatcher);
                if gap {
                    // Arrivals after a gap while subscribing: heal in the background.
                    if let Some(me) = self.me() {
                        me.spawn_heal(channel.into(), track, None, false);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.tracks.write().remove(channel);
                let _ = self
                    .subscriptions
                    .unsubscribe(partition, keyspace.pubsub_channel_in(partition, channel))
                    .await;
                Err(e)
            }
        }
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.tracks.write().remove(channel);
        let keyspace = &self.config.keyspace;
        let partition = keyspace.partition(channel);
        self.subscriptions
            .unsubscribe(partition, keyspace.pubsub_channel_in(partition, channel))
            .await
            .map_err(unavailable)
    }

    async fn publish_control(&self, event: ControlEvent) -> Result<(), BrokerError> {
        let channel = self.pubsub_channel(event.channel());
        let result: Result<(), _> = self
            .client
            .spublish(channel, Value::Bytes(envelope::control(&event)))
            .await;
        result.map_err(unavailable)
    }

    async fn command(&self, command: NodeCommand) -> Result<CommandReply, BrokerError> {
        let request = new_epoch();
        let receivers: i64 = self
            .client
            .spublish(
                self.control_channel.clone(),
                Value::Bytes(envelope::command(&request, &command)),
            )
            .await
            .map_err(unavailable)?;
        let key = self.config.keyspace.global_key(&format!("reply:{request}"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let replies: Vec<String> =
                self.client.lrange(&key, 0, -1).await.map_err(unavailable)?;
            if replies.len() as i64 >= receivers || Instant::now() >= deadline {
                if (replies.len() as i64) < receivers {
                    tracing::warn!(
                        answered = replies.len(),
                        nodes = receivers,
                        "node command: not every node answered in time"
                    );
                }
                let _: Result<(), _> = self.client.del(&key).await;
                // A node of an older build answers a bare count.
                let replies = replies
                    .iter()
                    .filter_map(|r| match r.parse::<u64>() {
                        Ok(n) => Some(CommandReply::Count(n)),
                        Err(_) => serde_json::from_str(r)
                            .ok()
                            .and_then(|v| CommandReply::from_json(&v)),
                    })
                    .collect();
                return Ok(CommandReply::merge(&command, replies));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn stats(&self) -> DeliveryStats {
        let s = &self.stats;
        DeliveryStats {
            gaps: s.gaps.load(Ordering::Relaxed),
            healed: s.healed.load(Ordering::Relaxed),
            lagged: s.lagged.load(Ordering::Relaxed),
            lost: s.lost.load(Ordering::Relaxed),
            bad_envelopes: s.bad_envelopes.load(Ordering::Relaxed),
            history_bytes: 0,
            moved: s.moved.load(Ordering::Relaxed),
        }
    }

    fn archive_stats(&self) -> Option<Arc<ArchiveStats>> {
        self.archive.as_ref().map(|(_, stats, _)| stats.clone())
    }

    fn history_capacity(&self) -> usize {
        self.config.history_size
    }
}
