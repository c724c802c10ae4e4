//! The gateway node: configuration, protocol, authentication, the connection hub, sessions
//! and HTTP. `main.rs` wires them together; see ARCHITECTURE.md for the map.

pub mod acl;
pub mod auth;
pub mod backends;
mod cmd;
pub mod config;
pub mod conn;
pub mod delta;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod session;
pub mod tcp;
pub mod tls;
pub mod webhook;
pub mod workers;
