//! Who is online and where.
//!
//! [`Presence`] tracks, per channel, which users are subscribed and with how many
//! connections, so that the gateway can push `join` when a user's first connection arrives and
//! `leave` when the last one goes. [`NodeRegistry`] lists the live gateway nodes behind sticky
//! routing. The in-process implementations serve one node; Redis ones (with TTL heartbeats)
//! implement the same traits for clustered mode.

mod local;
mod registry;

pub use local::LocalPresence;
pub use registry::{LocalRegistry, NodeInfo, NodeRegistry};

/// A user present on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// User id.
    pub user: String,
    /// Display name from the user's token, if any.
    pub name: Option<String>,
    /// Connections of this user subscribed to the channel.
    pub conns: u32,
}

/// Why a presence call failed.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The backend cannot take the call now.
    #[error("presence backend unavailable: {0}")]
    Unavailable(String),
}

/// Per-channel presence.
#[async_trait::async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records one more connection of `user` on `channel`; true when it is the user's first.
    async fn add(
        &self,
        channel: &str,
        user: &str,
        name: Option<&str>,
    ) -> Result<bool, PresenceError>;
    /// Records one connection fewer; true when it was the user's last.
    async fn remove(&self, channel: &str, user: &str) -> Result<bool, PresenceError>;
    /// The users present on `channel`, sorted by user id.
    async fn members(&self, channel: &str) -> Result<Vec<Member>, PresenceError>;
}
