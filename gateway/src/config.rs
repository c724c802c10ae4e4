//! Configuration: command-line flags, `GATEWAY_*` environment variables and an optional TOML
//! file, merged in that order of precedence and checked once at start-up.

use crate::acl::Namespace;
use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Every setting, as given on the command line, in the environment or in the config file.
/// Unset ones fall back to the file, then to the defaults named in each help text.
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(
    name = "gateway",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GATEWAY_GIT_COMMIT"), ")"),
    about = "WebSocket real-time messaging gateway"
)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// TOML file with any of these settings (snake_case keys) and `[[namespaces]]`.
    #[arg(long, env = "GATEWAY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "GATEWAY_LISTEN")]
    pub listen: Option<String>,
    /// This node's id [default: generated].
    #[arg(long, env = "GATEWAY_NODE_ID")]
    pub node_id: Option<String>,
    /// WebSocket URL clients reach this node at [default: ws://<listen>/ws].
    #[arg(long, env = "GATEWAY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// HS256 secret, at least 32 bytes (required unless --dev or a public key is used).
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Token algorithm: HS256, RS256 or EdDSA [default: HS256].
    #[arg(long, env = "GATEWAY_JWT_ALG")]
    pub jwt_alg: Option<String>,
    /// PEM public key file for RS256 or EdDSA.
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`, seconds [default: 5].
    #[arg(long, env = "GATEWAY_JWT_LEEWAY_SECS")]
    pub jwt_leeway_secs: Option<u64>,
    /// Key for the `/api/` endpoints (`Authorization: Bearer <key>`); unset disables the API.
    #[arg(long, env = "GATEWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Redis URL for clustered mode: one Redis (`redis://host:port/db`) or a Redis Cluster
    /// (`redis-cluster://host:port?node=host:port&node=host:port`, any of its nodes); Redis
    /// 7 or newer. Unset runs the embedded engine.
    #[arg(long, env = "GATEWAY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and pub/sub channel (one cluster per prefix) [default: gw].
    #[arg(long, env = "GATEWAY_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Partitions the channels are spread over in Redis (hash-tagged key groups: one slot of
    /// a Redis Cluster each, with their own archive stream); the same on every node, fixed
    /// for the life of the data (a node refuses to start on another count) [default: 16].
    #[arg(long, env = "GATEWAY_REDIS_PARTITIONS")]
    pub redis_partitions: Option<usize>,
    /// Capacity of the node's Redis pub/sub receiver, messages; a node that falls further
    /// behind heals from history [default: 4096].
    #[arg(long, env = "GATEWAY_REDIS_PUBSUB_CAPACITY")]
    pub redis_pubsub_capacity: Option<usize>,
    /// Seconds between checks of the positions of subscribed channels with recent traffic
    /// against Redis (finds a lost last message of a burst) [default: 5].
    #[arg(long, env = "GATEWAY_POSITION_CHECK_SECS")]
    pub position_check_secs: Option<u64>,
    /// Seconds over which every subscribed channel's position, quiet ones included, is
    /// checked once, a slice at each check [default: 60].
    #[arg(long, env = "GATEWAY_POSITION_SWEEP_SECS")]
    pub position_sweep_secs: Option<u64>,
    /// Seconds between presence heartbeats; a dead node's users leave after about three
    /// [default: 10].
    #[arg(long, env = "GATEWAY_PRESENCE_HEARTBEAT_SECS")]
    pub presence_heartbeat_secs: Option<u64>,
    /// Milliseconds over which presence changes are gathered into one `presence_diff` push
    /// per channel [default: 250].
    #[arg(long, env = "GATEWAY_PRESENCE_DIFF_INTERVAL_MS")]
    pub presence_diff_interval_ms: Option<u64>,
    /// Most users one `presence_diff` lists; past it the push says `overflow` instead
    /// [default: 200].
    #[arg(long, env = "GATEWAY_PRESENCE_DIFF_MAX")]
    pub presence_diff_max: Option<usize>,
    /// Message archive: `sqlite://PATH` (embedded mode), `postgres://...`, or `off`
    /// [default: embedded mode `sqlite://<data-dir>/archive.db`; clustered mode off].
    #[arg(long, env = "GATEWAY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory for the embedded archive [default: data].
    #[arg(long, env = "GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Messages waiting for the archive before publishes wait, then get `unavailable`
    /// [default: 100000].
    #[arg(long, env = "GATEWAY_ARCHIVE_QUEUE")]
    pub archive_queue: Option<usize>,
    /// Days archived messages are kept [default: 365].
    #[arg(long, env = "GATEWAY_ARCHIVE_RETENTION_DAYS")]
    pub archive_retention_days: Option<u64>,
    /// Development mode: `POST /dev/token` mints tokens, a random JWT secret is used if none.
    #[arg(long, env = "GATEWAY_DEV")]
    #[serde(default)]
    pub dev: bool,
    /// Log format: human or json [default: human].
    #[arg(long, env = "GATEWAY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, tracing syntax [default: info].
    #[arg(long, env = "GATEWAY_LOG")]
    pub log: Option<String>,
    /// Most concurrent connections on this node; more get 503 [default: 100000].
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most concurrent connections of one user on this node; more get 429 [default: 10].
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_USER")]
    pub max_connections_per_user: Option<usize>,
    /// Most subscriptions per connection, the personal channel not counted [default: 100].
    #[arg(long, env = "GATEWAY_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Publishes per second per connection (token bucket refill) [default: 100].
    #[arg(long, env = "GATEWAY_PUBLISH_RATE")]
    pub publish_rate: Option<u32>,
    /// Publish burst per connection (token bucket size) [default: 100].
    #[arg(long, env = "GATEWAY_PUBLISH_BURST")]
    pub publish_burst: Option<u32>,
    /// Subscribes and unsubscribes per second per connection (token bucket refill)
    /// [default: 10].
    #[arg(long, env = "GATEWAY_SUBSCRIBE_RATE")]
    pub subscribe_rate: Option<u32>,
    /// Subscribe and unsubscribe burst per connection (token bucket size) [default: 200].
    #[arg(long, env = "GATEWAY_SUBSCRIBE_BURST")]
    pub subscribe_burst: Option<u32>,
    /// Rejected publishes per minute before disconnecting with 4003 [default: 100].
    #[arg(long, env = "GATEWAY_MAX_RATE_LIMITED_PER_MINUTE")]
    pub max_rate_limited_per_minute: Option<u32>,
    /// Malformed frames per minute before disconnecting with `policy` [default: 10].
    #[arg(long, env = "GATEWAY_MAX_BAD_FRAMES_PER_MINUTE")]
    pub max_bad_frames_per_minute: Option<u32>,
    /// Largest frame or message accepted, bytes; larger closes with 1009 [default: 65536].
    #[arg(long, env = "GATEWAY_MAX_FRAME_SIZE")]
    pub max_frame_size: Option<usize>,
    /// Outbound queue per connection, frames; overflow disconnects with 4002 [default: 1024].
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,
    /// Seconds between server pings [default: 25].
    #[arg(long, env = "GATEWAY_PING_INTERVAL_SECS")]
    pub ping_interval_secs: Option<u64>,
    /// Seconds without any frame from the client before 4004 [default: 60].
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Most concurrent HTTP connections not (yet) upgraded to WebSocket: API calls, handshakes
    /// in progress, idle keep-alives; more are answered 503 at accept [default: 10000].
    #[arg(long, env = "GATEWAY_MAX_HTTP_CONNECTIONS")]
    pub max_http_connections: Option<usize>,
    /// Seconds an HTTP request has to send its body [default: 10].
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Origins allowed to open `/ws` from a browser, comma-separated (`https://app.example`),
    /// besides the gateway's own origin; `*` allows any. Requests without `Origin` (not from a
    /// browser) are always allowed [default: own origin only].
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Seconds a new TCP connection has to send its HTTP request [default: 10].
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds a drain may take before the process exits anyway [default: 10].
    #[arg(long, env = "GATEWAY_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// Messages of history kept per channel [default: 1000].
    #[arg(long, env = "GATEWAY_HISTORY_SIZE")]
    pub history_size: Option<usize>,
    /// Bytes of payload kept in one channel's history (the newest message is always kept)
    /// [default: 4194304].
    #[arg(long, env = "GATEWAY_HISTORY_MAX_BYTES")]
    pub history_max_bytes: Option<usize>,
    /// Bytes of payload kept in all the node's history together, embedded engine
    /// [default: 268435456].
    #[arg(long, env = "GATEWAY_HISTORY_NODE_MAX_BYTES")]
    pub history_node_max_bytes: Option<usize>,
    /// Seconds a message stays in history [default: 300].
    #[arg(long, env = "GATEWAY_HISTORY_TTL_SECS")]
    pub history_ttl_secs: Option<u64>,
    /// Seconds an idempotency key is remembered (at least 60) [default: 120].
    #[arg(long, env = "GATEWAY_DEDUP_WINDOW_SECS")]
    pub dedup_window_secs: Option<u64>,
    /// Most idempotency keys remembered per channel; new keys past it get `unavailable`
    /// until old ones expire [default: 100000].
    #[arg(long, env = "GATEWAY_DEDUP_MAX_KEYS")]
    pub dedup_max_keys: Option<usize>,
    /// Whether any user may publish to another's `user:<id>` channel [default: true].
    #[arg(long, env = "GATEWAY_DIRECT_MESSAGES")]
    pub direct_messages: Option<bool>,
    /// Runtime worker threads [default: one per CPU]. One worker writes more deliveries per
    /// socket write and wakes no other thread (BENCHMARKS.md, "The allocator and worker threads"); more use
    /// more cores.
    #[arg(long, env = "GATEWAY_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// WebSocket read buffer per connection, bytes [default: 512].
    #[arg(long, env = "GATEWAY_READ_BUFFER_SIZE")]
    pub read_buffer_size: Option<usize>,
    /// Namespaces (config file only): prefix, open, client_publish, presence.
    #[arg(skip)]
    pub namespaces: Option<Vec<Namespace>>,
}

macro_rules! merge_fields {
    ($dst:ident, $src:ident; $($field:ident),* $(,)?) => {
        $( if $dst.$field.is_none() { $dst.$field = $src.$field.take(); } )*
    };
}

impl Settings {
    /// Parses flags and environment, then fills gaps from the `--config` file.
    pub fn load() -> anyhow::Result<Self> {
        let mut settings = Settings::parse();
        if let Some(path) = settings.config.clone() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            // toml's own message draws the line with a caret under it over several lines;
            // a configuration error is one line (docs/protocol.md): position and reason.
            let file: Settings = toml::from_str(&text).map_err(|e| {
                let at = e.span().map_or(String::new(), |span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" at line {line}, column {column}")
                });
                anyhow::anyhow!(
                    "parsing config file {}{at}: {}",
                    path.display(),
                    e.message().trim()
                )
            })?;
            settings.merge_from(file);
        }
        Ok(settings)
    }

    fn merge_from(&mut self, mut file: Settings) {
        self.dev |= file.dev;
        merge_fields!(self, file; listen, node_id, public_url, jwt_secret, jwt_alg,
            jwt_public_key_file, jwt_issuer, jwt_audience, jwt_leeway_secs, api_key, redis_url,
            redis_prefix, redis_partitions, redis_pubsub_capacity, position_check_secs, position_sweep_secs, presence_heartbeat_secs,
            presence_diff_interval_ms, presence_diff_max,
            database_url, data_dir, archive_queue, archive_retention_days, log_format, log, max_connections, max_connections_per_user,
            max_subscriptions, publish_rate, publish_burst, subscribe_rate, subscribe_burst,
            max_rate_limited_per_minute, max_bad_frames_per_minute, max_frame_size,
            outbound_queue, ping_interval_secs, idle_timeout_secs, max_http_connections,
            request_timeout_secs, allowed_origins, handshake_timeout_secs, drain_timeout_secs,
            history_size, history_max_bytes, history_node_max_bytes, history_ttl_secs, dedup_window_secs, dedup_max_keys, direct_messages, read_buffer_size, worker_threads, namespaces);
    }
}

/// Token verification settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Algorithm every token must use.
    pub algorithm: jsonwebtoken::Algorithm,
    /// Verification key material: the HS256 secret or the PEM public key.
    pub key: JwtKey,
    /// Required issuer.
    pub issuer: Option<String>,
    /// Required audience.
    pub audience: Option<String>,
    /// Leeway for `exp`/`nbf`.
    pub leeway: Duration,
}

/// Key material for [`JwtConfig`].
#[derive(Clone)]
pub enum JwtKey {
    /// Shared secret (HS256); also lets dev mode mint tokens.
    Secret(Vec<u8>),
    /// PEM-encoded public key (RS256, EdDSA).
    PublicPem(Vec<u8>),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        match self {
            JwtKey::Secret(_) => f.write_str("Secret(..)"),
            JwtKey::PublicPem(_) => f.write_str("PublicPem(..)"),
        }
    }
}

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent connections on the node.
    pub max_connections: usize,
    /// Concurrent connections per user on the node.
    pub max_connections_per_user: usize,
    /// Subscriptions per connection (personal channel excluded).
    pub max_subscriptions: usize,
    /// Token bucket refill per second.
    pub publish_rate: u32,
    /// Token bucket size.
    pub publish_burst: u32,
    /// Subscribe/unsubscribe token bucket refill per second.
    pub subscribe_rate: u32,
    /// Subscribe/unsubscribe token bucket size.
    pub subscribe_burst: u32,
    /// Rejected publishes per minute before 4003.
    pub max_rate_limited_per_minute: u32,
    /// Malformed frames per minute before `policy`.
    pub max_bad_frames_per_minute: u32,
    /// Largest frame/message in bytes.
    pub max_frame_size: usize,
    /// Outbound queue capacity in frames.
    pub outbound_queue: usize,
    /// Ping interval.
    pub ping_interval: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Handshake timeout.
    pub handshake_timeout: Duration,
    /// Concurrent HTTP connections not upgraded to WebSocket.
    pub max_http_connections: usize,
    /// Deadline for reading a request body.
    pub request_timeout: Duration,
    /// WebSocket read buffer size.
    pub read_buffer_size: usize,
}

impl Limits {
    /// Most bytes of one reply frame (a `history` page is cut to fit, see
    /// `protocol::HistoryReply`).
    pub fn max_reply_bytes(&self) -> usize {
        self.max_frame_size.saturating_mul(4).max(1 << 20)
    }

    /// The socket's write-buffer bound: the largest reply plus room for a push converted to
    /// the other encoding (MessagePack numbers can triple in JSON text). A single frame over
    /// it could not be written at all.
    pub fn max_write_buffer(&self) -> usize {
        self.max_reply_bytes() + self.max_frame_size.saturating_mul(4) + (64 << 10)
    }
}

/// The checked configuration the node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: String,
    /// Node id.
    pub node_id: String,
    /// Public WebSocket URL, if configured (else derived from the bound address).
    pub public_url: Option<String>,
    /// Token verification.
    pub jwt: JwtConfig,
    /// API key.
    pub api_key: Option<String>,
    /// The API key was made up for dev mode (and is printed at start-up).
    pub generated_api_key: bool,
    /// Development mode.
    pub dev: bool,
    /// Runtime worker threads (`None`: one per CPU).
    pub worker_threads: Option<usize>,
    /// Log format is JSON.
    pub log_json: bool,
    /// Log filter.
    pub log_filter: String,
    /// Limits.
    pub limits: Limits,
    /// Drain deadline.
    pub drain_timeout: Duration,
    /// History bound by count.
    pub history_size: usize,
    /// History bound by payload bytes per channel.
    pub history_max_bytes: usize,
    /// History bound by payload bytes per node (embedded engine).
    pub history_node_max_bytes: usize,
    /// History bound by age.
    pub history_ttl: Duration,
    /// Browser origins allowed on `/ws` besides the node's own.
    pub allowed_origins: AllowedOrigins,
    /// Dedup window.
    pub dedup_window: Duration,
    /// Idempotency keys per channel.
    pub dedup_max_keys: usize,
    /// Direct messages allowed.
    pub direct_messages: bool,
    /// Namespaces.
    pub namespaces: Vec<Namespace>,
    /// Clustered mode, when set.
    pub redis: Option<RedisSettings>,
    /// Presence heartbeat interval.
    pub presence_heartbeat: Duration,
    /// How long presence changes gather before a `presence_diff`.
    pub presence_diff_interval: Duration,
    /// Most users listed in one `presence_diff`.
    pub presence_diff_max: usize,
    /// The message archive, when on.
    pub archive: Option<ArchiveSettings>,
}

/// Message archive settings.
#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    /// `sqlite://PATH` or `postgres://...`.
    pub url: String,
    /// Queue capacity, messages.
    pub queue: usize,
    /// How long messages are kept.
    pub retention: Duration,
}

/// Clustered-mode settings.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Redis URL.
    pub url: String,
    /// Key and channel prefix.
    pub prefix: String,
    /// Channel partitions.
    pub partitions: usize,
    /// Pub/sub receiver capacity.
    pub pubsub_capacity: usize,
    /// Position check interval.
    pub position_check: Duration,
    /// Period of the sweep over every subscribed channel's position.
    pub position_sweep: Duration,
}

/// Browser origins allowed to open `/ws`, besides the node's own (`Origin` whose host is the
/// request's `Host`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Any origin (`*`).
    Any,
    /// These origins (`scheme://host[:port]`, compared case-insensitively), plus the node's own.
    List(Vec<String>),
    /// The node's own origin only.
    #[default]
    SameOrigin,
}

impl AllowedOrigins {
    /// Parses a comma-separated list: empty means same origin only, `*` any origin.
    pub fn parse(list: &str) -> anyhow::Result<Self> {
        let mut origins = Vec::new();
        for origin in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if origin == "*" {
                return Ok(AllowedOrigins::Any);
            }
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains('/') => {
                    origins.push(origin.to_ascii_lowercase())
                }
                _ => bail!(
                    "--allowed-origins: {origin:?} is not an origin like https://app.example                      (scheme and host, optional port, no path), nor *"
                ),
            }
        }
        Ok(if origins.is_empty() {
            AllowedOrigins::SameOrigin
        } else {
            AllowedOrigins::List(origins)
        })
    }

    /// Whether a browser page at `origin` may open `/ws` on a node reached as `host`.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if let AllowedOrigins::Any = self {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        if let (Some(origin_host), Some(host)) = (origin_host, host)
            && origin_host.eq_ignore_ascii_case(host.trim())
        {
            return true;
        }
        match self {
            AllowedOrigins::List(list) => list.contains(&origin),
            _ => false,
        }
    }
}

/// Shortest HS256 secret accepted outside dev mode.
pub const MIN_SECRET_LEN: usize = 32;

impl Config {
    /// Applies defaults and checks the settings.
    pub fn from_settings(s: Settings) -> anyhow::Result<Self> {
        let redis = match s.redis_url.clone().filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => {
                if url.starts_with("rediss://") || url.starts_with("rediss-cluster://") {
                    bail!("--redis-url: TLS (rediss://) is not supported by this build");
                }
                if !url.starts_with("redis://") && !url.starts_with("redis-cluster://") {
                    bail!(
                        "--redis-url {url:?}: expected redis://host:port or \
                         redis-cluster://host:port?node=host:port"
                    );
                }
                let partitions = s.redis_partitions.unwrap_or(16);
                if !(1..=fanout::redis::MAX_PARTITIONS).contains(&partitions) {
                    bail!(
                        "--redis-partitions {partitions}: expected 1 to {}",
                        fanout::redis::MAX_PARTITIONS
                    );
                }
                Some(RedisSettings {
                    url,
                    partitions,
                    prefix: s.redis_prefix.clone().unwrap_or_else(|| "gw".into()),
                    pubsub_capacity: s.redis_pubsub_capacity.unwrap_or(4096).max(1),
                    position_check: Duration::from_secs(s.position_check_secs.unwrap_or(5).max(1)),
                    position_sweep: Duration::from_secs(s.position_sweep_secs.unwrap_or(60).max(1)),
                })
            }
        };
        let archive_url = match s.database_url.as_deref().map(str::trim) {
            Some("off") => None,
            Some(url) if !url.is_empty() => {
                if !(url.starts_with("sqlite://")
                    || url.starts_with("postgres://")
                    || url.starts_with("postgresql://"))
                {
                    bail!("--database-url: expected sqlite://PATH, postgres://... or off");
                }
                if redis.is_some() && url.starts_with("sqlite://") {
                    bail!(
                        "--database-url sqlite:// with --redis-url: nodes of a cluster share one \
                         archive; use postgres://... (or off)"
                    );
                }
                Some(url.to_string())
            }
            _ if redis.is_none() => {
                let dir = s.data_dir.clone().unwrap_or_else(|| PathBuf::from("data"));
                Some(format!("sqlite://{}", dir.join("archive.db").display()))
            }
            _ => None,
        };
        let archive = archive_url.map(|url| ArchiveSettings {
            url,
            queue: s.archive_queue.unwrap_or(100_000).max(1),
            retention: Duration::from_secs(
                s.archive_retention_days.unwrap_or(365).max(1) * 24 * 3600,
            ),
        });
        let jwt = jwt_config(&s)?;
        let listen = s.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
        listen.parse::<SocketAddr>().with_context(|| {
            format!("--listen {listen:?} is not an address like 127.0.0.1:8080")
        })?;
        let log_json = match s.log_format.as_deref().unwrap_or("human") {
            "human" => false,
            "json" => true,
            other => bail!("--log-format must be human or json, not {other:?}"),
        };
        let dedup_window = Duration::from_secs(s.dedup_window_secs.unwrap_or(120));
        if dedup_window < Duration::from_secs(60) {
            bail!("--dedup-window-secs must be at least 60");
        }
        let ping_interval = Duration::from_secs(s.ping_interval_secs.unwrap_or(25).max(1));
        let limits = Limits {
            max_connections: s.max_connections.unwrap_or(100_000),
            max_connections_per_user: s.max_connections_per_user.unwrap_or(10),
            max_subscriptions: s.max_subscriptions.unwrap_or(100),
            publish_rate: s.publish_rate.unwrap_or(100),
            publish_burst: s.publish_burst.unwrap_or(100).max(1),
            max_rate_limited_per_minute: s.max_rate_limited_per_minute.unwrap_or(100),
            max_bad_frames_per_minute: s.max_bad_frames_per_minute.unwrap_or(10),
            max_frame_size: s.max_frame_size.unwrap_or(64 * 1024).max(128),
            outbound_queue: s.outbound_queue.unwrap_or(1024).max(1),
            ping_interval,
            idle_timeout: Duration::from_secs(s.idle_timeout_secs.unwrap_or(60).max(1)),
            handshake_timeout: Duration::from_secs(s.handshake_timeout_secs.unwrap_or(10).max(1)),
            read_buffer_size: s.read_buffer_size.unwrap_or(512).max(64),
            subscribe_rate: s.subscribe_rate.unwrap_or(10),
            subscribe_burst: s.subscribe_burst.unwrap_or(200).max(1),
            max_http_connections: s.max_http_connections.unwrap_or(10_000).max(1),
            request_timeout: Duration::from_secs(s.request_timeout_secs.unwrap_or(10).max(1)),
        };
        let allowed_origins = AllowedOrigins::parse(s.allowed_origins.as_deref().unwrap_or(""))?;
        if s.worker_threads == Some(0) {
            bail!("--worker-threads must be at least 1");
        }
        Ok(Config {
            worker_threads: s.worker_threads,
            listen,
            node_id: s
                .node_id
                .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>())),
            public_url: s.public_url,
            jwt,
            generated_api_key: s.dev && s.api_key.as_deref().is_none_or(str::is_empty),
            api_key: s.api_key.filter(|k| !k.is_empty()).or_else(|| {
                // Dev mode without a key gets a random one (printed at start-up).
                s.dev
                    .then(|| format!("dev-{:032x}", rand::random::<u128>()))
            }),
            dev: s.dev,
            log_json,
            log_filter: s.log.unwrap_or_else(|| "info".into()),
            limits,
            drain_timeout: Duration::from_secs(s.drain_timeout_secs.unwrap_or(10)),
            history_size: s.history_size.unwrap_or(1000).max(1),
            history_max_bytes: s.history_max_bytes.unwrap_or(4 << 20).max(1),
            history_node_max_bytes: s.history_node_max_bytes.unwrap_or(256 << 20).max(1),
            history_ttl: Duration::from_secs(s.history_ttl_secs.unwrap_or(300)),
            allowed_origins,
            dedup_window,
            dedup_max_keys: s.dedup_max_keys.unwrap_or(100_000).max(1),
            direct_messages: s.direct_messages.unwrap_or(true),
            namespaces: Namespace::with_defaults(s.namespaces.unwrap_or_default()),
            redis,
            presence_heartbeat: Duration::from_secs(s.presence_heartbeat_secs.unwrap_or(10).max(1)),
            presence_diff_interval: Duration::from_millis(
                s.presence_diff_interval_ms.unwrap_or(250).clamp(10, 60_000),
            ),
            presence_diff_max: s.presence_diff_max.unwrap_or(200),
            archive,
        })
    }
}

fn jwt_config(s: &Settings) -> anyhow::Result<JwtConfig> {
    use jsonwebtoken::Algorithm;
    let algorithm = match s.jwt_alg.as_deref().unwrap_or("HS256") {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "EdDSA" => Algorithm::EdDSA,
        other => bail!("--jwt-alg must be HS256, RS256 or EdDSA, not {other:?}"),
    };
    let key = if algorithm == Algorithm::HS256 {
        match &s.jwt_secret {
            Some(secret) if secret.len() >= MIN_SECRET_LEN || s.dev => {
                JwtKey::Secret(secret.as_bytes().to_vec())
            }
            Some(_) => bail!(
                "the JWT secret (--jwt-secret / GATEWAY_JWT_SECRET) is weak: use at least \
                 {MIN_SECRET_LEN} bytes, for example `openssl rand -hex 32`"
            ),
            None if s.dev => {
                let random: [u8; 32] = rand::random();
                JwtKey::Secret(random.to_vec())
            }
            None => bail!(
                "no JWT secret: set --jwt-secret / GATEWAY_JWT_SECRET (at least {MIN_SECRET_LEN} \
                 bytes), or use --jwt-alg RS256|EdDSA with --jwt-public-key-file, or --dev"
            ),
        }
    } else {
        let path = s
            .jwt_public_key_file
            .as_ref()
            .context("--jwt-alg RS256/EdDSA needs --jwt-public-key-file")?;
        let pem = std::fs::read(path)
            .with_context(|| format!("reading JWT public key {}", path.display()))?;
        JwtKey::PublicPem(pem)
    };
    Ok(JwtConfig {
        algorithm,
        key,
        issuer: s.jwt_issuer.clone(),
        audience: s.jwt_audience.clone(),
        leeway: Duration::from_secs(s.jwt_leeway_secs.unwrap_or(5)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Settings {
        let mut argv = vec!["gateway"];
        argv.extend_from_slice(args);
        Settings::parse_from(argv)
    }

    #[test]
    fn missing_or_weak_secret_is_refused_outside_dev() {
        let err = Config::from_settings(settings(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no JWT secret"), "{err}");
        let err = Config::from_settings(settings(&["--jwt-secret", "short"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("weak"), "{err}");
        assert!(Config::from_settings(settings(&["--dev"])).is_ok());
    }

    #[test]
    fn origins() {
        let same = AllowedOrigins::parse("").unwrap();
        assert!(same.allows("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(same.allows("HTTPS://Chat.Example", Some("chat.example")));
        assert!(!same.allows("http://evil.example", Some("127.0.0.1:8080")));
        assert!(!same.allows("null", Some("127.0.0.1:8080")));
        assert!(!same.allows("http://127.0.0.1:8080", None));
        let list = AllowedOrigins::parse("https://app.example, http://localhost:3000").unwrap();
        assert!(list.allows("https://APP.example", Some("gw.example")));
        assert!(list.allows("http://localhost:3000", Some("gw.example")));
        assert!(!list.allows("http://app.example", Some("gw.example")));
        assert!(AllowedOrigins::parse("*,x").unwrap().allows("null", None));
        assert!(AllowedOrigins::parse("app.example").is_err());
        assert!(AllowedOrigins::parse("https://app.example/path").is_err());
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let mut s = settings(&["--max-subscriptions", "7"]);
        let file: Settings = toml::from_str(
            "max_subscriptions = 2\npublish_rate = 3\n[[namespaces]]\nprefix = \"news:\"\nopen = true\nclient_publish = false\npresence = false\n",
        )
        .unwrap();
        s.merge_from(file);
        s.dev = true;
        let c = Config::from_settings(s).unwrap();
        assert_eq!(c.limits.max_subscriptions, 7);
        assert_eq!(c.limits.publish_rate, 3);
        // `news:` is added to the default `room:`.
        assert_eq!(c.namespaces.len(), 2);
    }
}
