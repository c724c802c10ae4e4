//! Connecting to Redis (one server or a Redis Cluster), claiming the key layout, and what a
//! Redis error means for the caller.

use super::Keyspace;
use crate::broker::BrokerError;
use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, KeysInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::Value;
use std::time::Duration;

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
    let key = keyspace.layout();
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

pub(super) fn unavailable(e: fred::error::Error) -> BrokerError {
    if is_transient(&e) {
        BrokerError::Unavailable(e.to_string())
    } else {
        BrokerError::Backend(e.to_string())
    }
}

/// The bytes of a bulk string reply or pub/sub message, without copying them.
pub(super) fn value_bytes(value: Value) -> Option<Bytes> {
    match value {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.into_inner()),
        _ => None,
    }
}
