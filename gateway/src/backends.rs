//! Chooses the node's backends at start: the embedded engine, or Redis when configured.

use crate::config::Config;
use crate::hub::Hub;
use crate::node::{Backends, REGISTRY_TTL};
use fanout::{LocalBroker, LocalBrokerConfig};
use presence::{LocalPresence, LocalRegistry};
use std::sync::Arc;

/// The embedded engine: in-process broker (running its own upkeep), presence and registry.
pub fn embedded(config: &Config, hub: Arc<Hub>) -> Backends {
    let broker = LocalBroker::start(
        LocalBrokerConfig {
            history_size: config.history_size,
            history_ttl: config.history_ttl,
            dedup_window: config.dedup_window,
            dedup_max_keys: config.dedup_max_keys,
        },
        hub,
    );
    Backends {
        broker,
        presence: Arc::new(LocalPresence::new()),
        registry: Arc::new(LocalRegistry::new(REGISTRY_TTL)),
    }
}
