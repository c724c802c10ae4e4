//! Everything one gateway node shares between its sessions and HTTP handlers.

use crate::acl::Acl;
use crate::auth::Verifier;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::metrics;
use crate::protocol::CloseReason;
use fanout::{Broker, LocalBroker, LocalBrokerConfig};
use metrics_exporter_prometheus::PrometheusHandle;
use presence::{LocalPresence, LocalRegistry, NodeInfo, NodeRegistry, Presence};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How long a node stays in the registry without a heartbeat.
pub const REGISTRY_TTL: Duration = Duration::from_secs(15);

/// The shared state of a node.
pub struct Node {
    /// Checked configuration.
    pub config: Config,
    /// Token verifier.
    pub verifier: Verifier,
    /// Access rules.
    pub acl: Acl,
    /// Local connection map.
    pub hub: Arc<Hub>,
    /// Message path.
    pub broker: Arc<dyn Broker>,
    /// Per-channel presence.
    pub presence: Arc<dyn Presence>,
    /// Live nodes.
    pub registry: Arc<dyn NodeRegistry>,
    /// The public WebSocket URL of this node.
    pub public_url: String,
    /// Prometheus renderer, when the recorder is installed.
    pub prometheus: Option<PrometheusHandle>,
    local_broker: Option<Arc<LocalBroker>>,
    draining: AtomicBool,
    next_conn_id: AtomicU64,
    sessions: AtomicUsize,
}

impl Node {
    /// Builds an embedded-mode node (in-process broker, presence and registry).
    pub fn embedded(
        config: Config,
        public_url: String,
        prometheus: Option<PrometheusHandle>,
    ) -> anyhow::Result<Arc<Node>> {
        let hub = Arc::new(Hub::new());
        let broker = Arc::new(LocalBroker::new(
            LocalBrokerConfig {
                history_size: config.history_size,
                history_ttl: config.history_ttl,
                dedup_window: config.dedup_window,
                dedup_max_keys: config.dedup_max_keys,
            },
            hub.clone(),
        ));
        Ok(Arc::new(Node {
            verifier: Verifier::new(&config.jwt)?,
            acl: Acl::new(config.namespaces.clone(), config.direct_messages),
            hub,
            broker: broker.clone(),
            presence: Arc::new(LocalPresence::new()),
            registry: Arc::new(LocalRegistry::new(REGISTRY_TTL)),
            public_url,
            prometheus,
            local_broker: Some(broker),
            draining: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(1),
            sessions: AtomicUsize::new(0),
            config,
        }))
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sessions (accepted handshakes) not finished yet, closing ones included.
    pub fn session_count(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Counts a session in (`true`) or out (`false`); used by the session's registration.
    pub(crate) fn track_session(&self, started: bool) {
        if started {
            self.sessions.fetch_add(1, Ordering::Relaxed);
        } else {
            self.sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// True once a drain started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining: readiness turns 503, new sessions are refused, and every session is
    /// asked to close with `shutdown`.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        metrics().draining.set(1.0);
        self.hub.close_all(CloseReason::Shutdown);
    }

    /// This node as the registry lists it.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.config.node_id.clone(),
            url: self.public_url.clone(),
            connections: self.hub.connection_count() as u64,
        }
    }

    /// Periodic upkeep: registry heartbeat, history and dedup expiry, metrics upkeep.
    pub async fn run_maintenance(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            if !self.is_draining() {
                if let Err(e) = self.registry.heartbeat(self.info()).await {
                    tracing::warn!(error = %e, "node registry heartbeat failed");
                }
            }
            if let Some(broker) = &self.local_broker {
                broker.sweep();
            }
            if let Some(handle) = &self.prometheus {
                handle.run_upkeep();
            }
        }
    }
}
