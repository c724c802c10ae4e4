//! The clustered broker: offsets, history and dedup in Redis, fan-out over Redis pub/sub.
//!
//! - **Publish** is one round trip: a Lua script on the channel's hash-tagged keys does the
//!   dedup check, the offset increment, the append to the channel's history stream (bounded
//!   by count, expiring with the history TTL) and the SPUBLISH of one MessagePack envelope.
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
mod cluster;
mod command;
mod connect;
mod envelope;
mod heal;
mod keyspace;
mod loops;
mod positions;
mod publish;
mod read;
mod scripts;
mod subscriptions;
mod track;

pub use connect::{RedisConnectOptions, claim_layout, connect, is_transient};
pub use envelope::check_envelope;
pub use keyspace::{Keyspace, MAX_PARTITIONS, PresenceKeys};

use crate::archive::{Archive, ArchiveStats, ArchiverConfig};
use crate::broker::{
    Broker, BrokerError, CommandReply, ControlEvent, DeliveryStats, Dispatcher, HistoryPage,
    HistoryQuery, NodeCommand, PublishOutcome, PublishRequest,
};
use archiver::StreamArchiver;
use connect::unavailable;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Value;
use parking_lot::{Mutex, RwLock};
use scripts::Scripts;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use subscriptions::Subscriptions;
use track::Track;

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

/// The archive as the broker sees it.
struct ArchiveLink {
    /// The database (for completing history pages and archived positions).
    archive: Arc<dyn Archive>,
    /// This node's archiver's counters (`pending`: entries still in the streams).
    stats: Arc<ArchiveStats>,
    /// The archive stream's bound (entries per partition).
    bound: usize,
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
    scripts: Arc<Scripts>,
    tracks: RwLock<HashMap<Arc<str>, Arc<Mutex<Track>>>>,
    healthy: AtomicBool,
    control_channel: String,
    /// This broker's id among the cluster's, for node command answers.
    instance: String,
    /// Where other nodes answer this broker's node commands.
    reply_channel: String,
    /// Node commands waiting for answers.
    pending: command::Pending,
    command_seq: AtomicU64,
    stats: RedisBrokerStats,
    archive: Option<ArchiveLink>,
    /// Partitions with archived publishes the archiver has not read yet.
    hot: Arc<archiver::HotPartitions>,
    /// On a Redis Cluster, each partition's primary when the node last subscribed there.
    owners: Mutex<Vec<Option<String>>>,
    /// Some track is suspect of following a stream that lost writes and was not checked
    /// yet (a check failed, or a read found a reused offset): the next resync checks it.
    unverified: AtomicBool,
    /// Sweep slices handed to new tracks, round robin.
    next_slice: AtomicU32,
    /// Short-interval position checks so far.
    check_round: AtomicU32,
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
        let scripts = Arc::new(Scripts::load(&client).await.map_err(unavailable)?);
        let control_channel = config.keyspace.control_channel();
        let instance = crate::util::new_epoch();
        let reply_channel = config.keyspace.reply_channel(&instance);
        let archive_keys: Vec<String> = (0..config.keyspace.partitions())
            .map(|p| config.keyspace.archive_stream(p))
            .collect();
        let hot = Arc::new(archiver::HotPartitions::new(archive_keys.len()));
        let stats = Arc::new(ArchiveStats::default());
        let broker = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            client,
            subscriptions: Subscriptions::start(subscriber.clone()),
            subscriber,
            dispatcher,
            scripts: scripts.clone(),
            tracks: RwLock::default(),
            healthy: AtomicBool::new(true),
            control_channel,
            instance,
            reply_channel,
            pending: command::Pending::default(),
            command_seq: AtomicU64::new(0),
            stats: RedisBrokerStats::default(),
            archive: archive.as_ref().map(|a| ArchiveLink {
                archive: a.archive.clone(),
                stats: stats.clone(),
                bound: a.config.capacity,
            }),
            hot: hot.clone(),
            owners: Mutex::default(),
            unverified: AtomicBool::new(false),
            next_slice: AtomicU32::new(0),
            check_round: AtomicU32::new(0),
            config,
        });
        let messages = broker.subscriber.message_rx();
        let reconnects = broker.subscriber.reconnect_rx();
        broker
            .subscriber
            .ssubscribe(vec![
                broker.control_channel.clone(),
                broker.reply_channel.clone(),
            ])
            .await
            .map_err(unavailable)?;
        if broker.subscriber.is_clustered() {
            *broker.owners.lock() = broker.partition_owners();
        }
        let weak = Arc::downgrade(&broker);
        tokio::spawn(loops::read_loop(weak.clone(), messages));
        tokio::spawn(loops::reconnect_loop(weak.clone(), reconnects));
        tokio::spawn(loops::check_loop(weak));
        if let Some(archive) = archive {
            let archiver = StreamArchiver {
                client: broker.client.clone(),
                keyspace: broker.config.keyspace.clone(),
                keys: archive_keys,
                scripts,
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

    /// Records whether Redis answered (for `/healthz`).
    fn mark(&self, result: Result<(), &BrokerError>) {
        let ok = !matches!(
            result,
            Err(BrokerError::Unavailable(_) | BrokerError::OutcomeUnknown(_))
        );
        self.healthy.store(ok, Ordering::Relaxed);
    }

    fn track(&self, channel: &str) -> Option<Arc<Mutex<Track>>> {
        self.tracks.read().get(channel).cloned()
    }
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        self.publish_resuming(&request).await
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        self.history_page(channel, query).await
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
        let channel = self.config.keyspace.pubsub_channel(event.channel());
        let result: Result<(), _> = self
            .client
            .spublish(channel, Value::Bytes(envelope::control(&event)))
            .await;
        result.map_err(unavailable)
    }

    async fn command(&self, command: NodeCommand) -> Result<CommandReply, BrokerError> {
        self.run_command(command).await
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
        self.archive.as_ref().map(|a| a.stats.clone())
    }

    fn history_capacity(&self) -> usize {
        self.config.history_size
    }
}
