//! The registry of live gateway nodes.

use parking_lot::RwLock;
use std::time::{Duration, Instant};

/// A gateway node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// WebSocket URL clients reach it at.
    pub url: String,
    /// Connections it holds.
    pub connections: u64,
    /// Connections it takes at most (`--max-connections`): with `connections`, its load.
    pub capacity: u64,
}

impl NodeInfo {
    /// Whether it takes no more connections.
    pub fn is_full(&self) -> bool {
        self.capacity > 0 && self.connections >= self.capacity
    }
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The backend cannot be reached or did not answer in time.
    #[error("node registry unavailable: {0}")]
    Unavailable(String),
    /// The backend answered something this code does not understand.
    #[error("node registry error: {0}")]
    Backend(String),
}

/// Live nodes, each kept by a TTL heartbeat.
///
/// Contract: a node heartbeats well inside the TTL (a third of it); a node whose heartbeats
/// stop disappears from [`nodes`](NodeRegistry::nodes) once the TTL passes; a draining node
/// deregisters at once. `nodes` is sorted by id, so every node hashing users over it agrees.
#[async_trait::async_trait]
pub trait NodeRegistry: Send + Sync + 'static {
    /// Registers or refreshes `node`; it stays listed for the registry's TTL.
    async fn heartbeat(&self, node: NodeInfo) -> Result<(), RegistryError>;
    /// Removes `id` at once (a draining node).
    async fn deregister(&self, id: &str) -> Result<(), RegistryError>;
    /// Nodes whose heartbeat is still within the TTL, sorted by id.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError>;
}

/// In-process [`NodeRegistry`]: one node lists itself.
pub struct LocalRegistry {
    ttl: Duration,
    nodes: RwLock<Vec<(NodeInfo, Instant)>>,
}

impl LocalRegistry {
    /// A registry whose entries expire `ttl` after their last heartbeat.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            nodes: RwLock::new(Vec::new()),
        }
    }
}

#[async_trait::async_trait]
impl NodeRegistry for LocalRegistry {
    async fn heartbeat(&self, node: NodeInfo) -> Result<(), RegistryError> {
        let mut nodes = self.nodes.write();
        let now = Instant::now();
        match nodes.iter_mut().find(|(n, _)| n.id == node.id) {
            Some(entry) => *entry = (node, now),
            None => nodes.push((node, now)),
        }
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        self.nodes.write().retain(|(n, _)| n.id != id);
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let now = Instant::now();
        let mut live: Vec<NodeInfo> = self
            .nodes
            .read()
            .iter()
            .filter(|(_, at)| now.duration_since(*at) <= self.ttl)
            .map(|(n, _)| n.clone())
            .collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, connections: u64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            url: format!("ws://{id}/ws"),
            connections,
            capacity: 100,
        }
    }

    #[tokio::test]
    async fn heartbeats_refresh_and_expire() {
        // Long enough that a loaded machine does not expire entries between the calls.
        let r = LocalRegistry::new(Duration::from_millis(1000));
        r.heartbeat(node("b", 1)).await.unwrap();
        r.heartbeat(node("a", 1)).await.unwrap();
        r.heartbeat(node("a", 7)).await.unwrap();
        let nodes = r.nodes().await.unwrap();
        assert_eq!(nodes, vec![node("a", 7), node("b", 1)]);
        r.deregister("a").await.unwrap();
        assert_eq!(r.nodes().await.unwrap().len(), 1);
        std::thread::sleep(Duration::from_millis(1300));
        assert!(r.nodes().await.unwrap().is_empty());
    }
}
