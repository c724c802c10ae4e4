//! The message path of the gateway, behind one trait.
//!
//! A [`Broker`] gives each channel a strictly increasing offset and an epoch, keeps recent
//! history, deduplicates publishes by idempotency key, and hands every accepted
//! [`Publication`] to the node's [`Dispatcher`] in offset order. [`LocalBroker`] does all of it
//! in process (embedded mode); [`RedisBroker`] does it on Redis for many nodes (clustered mode).

pub mod archive;
mod broker;
mod dedup;
mod history;
mod local;
mod publication;
pub mod redis;
pub mod util;

pub use broker::{
    Broker, BrokerError, CommandReply, ControlEvent, DeliveryStats, Dispatcher, HistoryPage,
    HistoryQuery, MAX_CHANNELS_PER_NODE, NodeCommand, NodeStats, PublishOutcome, PublishRequest,
    RecoveryOutcome, sort_channels,
};
pub use local::{LocalBroker, LocalBrokerConfig};
pub use publication::{Payload, PayloadError, Publication};
pub use redis::{RedisArchive, RedisBroker, RedisBrokerConfig, RedisConnectOptions};
