//! End-to-end test harness for the gateway.
//!
//! Every test starts its own `gateway` process (see [`GatewayBuilder`]), talks to it over real
//! sockets with real WebSocket clients ([`Client`], [`Connect`]) and a tiny HTTP/1.1 client
//! ([`http`]), and mints its own JWTs ([`Token`]). Clustered-mode tests start their own
//! `redis-server` ([`RedisServer`]) that they can pause, kill and restart; with `E2E_REDIS`
//! set, every gateway runs on a private one. Archive tests get a fresh PostgreSQL database
//! ([`PgDatabase`]) and can cut it off, or hold its traffic, behind a [`TcpProxy`]; the chaos
//! audit drops a port's packets in the kernel ([`partition`]). Nothing here knows the gateway's internals: the
//! contract is `docs/protocol.md`.

pub mod backend;
pub mod client;
pub mod gateway;
pub mod http;
pub mod jwt;
pub mod loadgen;
pub mod nginx;
pub mod partition;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod tls;

pub use backend::Backend;
pub use client::{Client, Connect, Encoding, HttpRefusal, error_code};
pub use gateway::{
    Gateway, GatewayBuilder, TempDir, assert_config_error, assert_startup_error, gateway_bin,
    loadgen_bin,
};
pub use http::{
    API_AUTH, HttpResponse, api_get, api_post, api_publish, assert_api_error, exchange_head, http,
    https, metric, metric_value, parse_response, read_until_closed,
};
pub use jwt::{API_KEY, KeyKind, KeyPair, TEST_SECRET, Token, now_secs, token};
pub use loadgen::{LoadgenRun, assert_clean, run_loadgen, run_loadgen_full, run_loadgen_urls};
pub use nginx::Nginx;
pub use postgres::{ArchivedRow, PgDatabase};
pub use proxy::TcpProxy;
pub use redis::{REDIS_CLUSTER_ENV, Redis, RedisCluster, RedisServer, RedisUrl};
pub use tls::{ServerCert, TestCa, tls_connect};

use std::time::Duration;

/// Shorthand for a number of seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Shorthand for a number of milliseconds.
pub fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Reads `v` as an unsigned integer, panicking with the value when it is not one.
pub fn as_u64(v: &serde_json::Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected an unsigned integer, got {v}"))
}

/// Reads `v` as a string, panicking with the value when it is not one.
pub fn as_str(v: &serde_json::Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

/// Waits until `check` holds, asking again every 50 ms; panics naming `what` when it still
/// does not after `within` (give a deadline far beyond what a loaded machine needs). For the
/// events a test can only observe by asking (a metric, a Redis count, a process state).
pub async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
