//! Chooses the node's backends at start: the embedded engine, or Redis when configured.

use crate::config::{Config, RedisSettings};
use crate::hub::Hub;
use crate::node::{Backends, REGISTRY_TTL};
use anyhow::Context;
use fanout::archive::{Archive, ArchiverConfig, SqlArchive};
use fanout::redis::Keyspace;
use fanout::{
    LocalBroker, LocalBrokerConfig, RedisArchive, RedisBroker, RedisBrokerConfig,
    RedisConnectOptions,
};
use presence::{Change, LocalPresence, LocalRegistry, RedisPresence, RedisRegistry};
use std::sync::Arc;
use std::time::Duration;

/// How long a channel's offset and epoch outlive its last publish in Redis (at least the
/// history TTL): a subscriber's epoch stays valid across quiet spells this long.
const META_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The configured backends, and the presence changes found at start (entries an earlier
/// process with this node id left behind), for the node to announce.
pub async fn connect(config: &Config, hub: Arc<Hub>) -> anyhow::Result<(Backends, Vec<Change>)> {
    match &config.redis {
        None => Ok((embedded(config, hub).await?, Vec::new())),
        Some(redis) => clustered(config, redis, hub).await,
    }
}

/// Clustered mode: broker, presence and registry in Redis.
pub async fn clustered(
    config: &Config,
    redis: &RedisSettings,
    hub: Arc<Hub>,
) -> anyhow::Result<(Backends, Vec<Change>)> {
    let options = RedisConnectOptions {
        pubsub_capacity: redis.pubsub_capacity,
        ..Default::default()
    };
    let (client, subscriber) = fanout::redis::connect(&redis.url, &options)
        .await
        .context("connecting to Redis (--redis-url)")?;
    let keyspace = Keyspace::new(&redis.prefix, redis.partitions);
    fanout::redis::claim_layout(&client, &keyspace)
        .await
        .context("checking the Redis key layout (--redis-partitions)")?;
    let archive = match &config.archive {
        None => None,
        Some(settings) => Some(RedisArchive {
            archive: open_archive(&settings.url, settings.retention).await?,
            config: ArchiverConfig {
                capacity: settings.queue,
                ..Default::default()
            },
            consumer: config.node_id.clone(),
        }),
    };
    let broker = RedisBroker::start(
        client.clone(),
        subscriber,
        RedisBrokerConfig {
            keyspace: keyspace.clone(),
            history_size: config.history_size,
            history_ttl: config.history_ttl,
            meta_ttl: META_TTL.max(config.history_ttl),
            dedup_window: config.dedup_window,
            dedup_max_keys: config.dedup_max_keys,
            position_check_interval: redis.position_check,
            position_sweep_interval: redis.position_sweep,
        },
        hub,
        archive,
    )
    .await
    .context("starting the Redis broker")?;
    let (presence, departures) = RedisPresence::start(
        client.clone(),
        keyspace.clone(),
        &config.node_id,
        config.presence_heartbeat,
        feed_filter(config),
    )
    .await
    .context("starting Redis presence")?;
    let backends = Backends {
        broker,
        presence: Arc::new(presence),
        registry: Arc::new(RedisRegistry::new(client, &keyspace, REGISTRY_TTL)),
    };
    Ok((backends, departures))
}

/// The embedded engine: in-process broker (running its own upkeep), presence and registry;
/// with an archive, the broker archives into it (SQLite by default).
pub async fn embedded(config: &Config, hub: Arc<Hub>) -> anyhow::Result<Backends> {
    let broker_config = LocalBrokerConfig {
        history_size: config.history_size,
        history_max_bytes: config.history_max_bytes,
        history_node_max_bytes: config.history_node_max_bytes,
        history_ttl: config.history_ttl,
        dedup_window: config.dedup_window,
        dedup_max_keys: config.dedup_max_keys,
    };
    let broker = match &config.archive {
        None => LocalBroker::start(broker_config, hub),
        Some(settings) => {
            let archive = open_archive(&settings.url, settings.retention).await?;
            let archiver = ArchiverConfig {
                capacity: settings.queue,
                ..Default::default()
            };
            LocalBroker::start_archived(broker_config, hub, archive, archiver)
        }
    };
    Ok(Backends {
        broker,
        presence: Arc::new(match feed_filter(config) {
            Some(filter) => LocalPresence::with_feed(filter),
            None => LocalPresence::new(),
        }),
        registry: Arc::new(LocalRegistry::new(REGISTRY_TTL)),
    })
}

/// Opens the archive database (migrating its schema) and starts its retention job. A SQLite
/// file is locked for the life of the process: two nodes sharing one would interleave their
/// offsets and epochs.
async fn open_archive(url: &str, retention: Duration) -> anyhow::Result<Arc<dyn Archive>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        lock_sqlite(std::path::Path::new(path))?;
    }
    let archive: Arc<dyn Archive> = Arc::new(
        SqlArchive::connect(url)
            .await
            .with_context(|| format!("opening the archive {}", redacted(url)))?,
    );
    spawn_retention(archive.clone(), retention);
    Ok(archive)
}

/// Takes an exclusive lock on `<path>.lock`, held until the process exits.
fn lock_sqlite(path: &std::path::Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let lock_path = path.with_extension("db.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    if file.try_lock().is_err() {
        anyhow::bail!(
            "{} is in use by another gateway process: give each node its own --data-dir",
            path.display()
        );
    }
    // Held (and the lock with it) for as long as the process runs.
    std::mem::forget(file);
    Ok(())
}

/// How often archived messages past their retention are deleted.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// Deletes archived messages older than `retention`, now and every hour.
fn spawn_retention(archive: Arc<dyn Archive>, retention: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_INTERVAL);
        loop {
            tick.tick().await;
            let cutoff = fanout::util::unix_millis().saturating_sub(retention.as_millis() as u64);
            match archive.expire(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "archive retention"),
                Err(e) => tracing::warn!(error = %e, "archive retention failed"),
            }
        }
    });
}

/// A database URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// With webhooks on, the channels whose presence transitions go to the change feed: those of
/// namespaces with `webhooks`.
fn feed_filter(config: &Config) -> Option<presence::FeedFilter> {
    config.webhook.as_ref()?;
    let acl = crate::acl::Acl::new(config.namespaces.clone(), config.direct_messages);
    Some(Arc::new(move |channel: &str| acl.webhooks_enabled(channel)))
}
