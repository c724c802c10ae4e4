//! Configuration: command-line flags, `GATEWAY_*` environment variables and an optional TOML
//! file, merged in that order of precedence and checked once at start-up.

mod settings;

pub use settings::Settings;

use crate::acl::Namespace;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::time::Duration;

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

/// Where the listener's TLS certificate and key are read from (at start and on SIGHUP).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, the node's own certificate first.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
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
    /// TLS on the listener: the certificate chain and key files (PEM).
    pub tls: Option<TlsFiles>,
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
    /// The backend proxies (docs/proxies.md).
    pub proxy: crate::proxy::ProxyConfig,
    /// The webhooks (docs/webhooks.md), when on.
    pub webhook: Option<WebhookConfig>,
}

/// Where and how the webhooks are sent.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The receiver (`http://`).
    pub url: http::Uri,
    /// HMAC-SHA256 key of `X-Pusher-Signature`.
    pub secret: Vec<u8>,
    /// `X-Pusher-Key`.
    pub key: String,
    /// Events sent.
    pub events: Vec<presence::FeedKind>,
    /// Time one request may take.
    pub timeout: Duration,
    /// How long a batch is retried before its events are dead letters.
    pub retry: Duration,
    /// Most events per request.
    pub batch: usize,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
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
                let partitions = s.redis_partitions;
                if !(1..=fanout::redis::MAX_PARTITIONS).contains(&partitions) {
                    bail!(
                        "--redis-partitions {partitions}: expected 1 to {}",
                        fanout::redis::MAX_PARTITIONS
                    );
                }
                Some(RedisSettings {
                    url,
                    partitions,
                    prefix: s.redis_prefix.clone(),
                    pubsub_capacity: s.redis_pubsub_capacity.max(1),
                    position_check: Duration::from_secs(s.position_check_secs.max(1)),
                    position_sweep: Duration::from_secs(s.position_sweep_secs.max(1)),
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
                let dir = s.data_dir.clone();
                Some(format!("sqlite://{}", dir.join("archive.db").display()))
            }
            _ => None,
        };
        let archive = archive_url.map(|url| ArchiveSettings {
            url,
            queue: s.archive_queue.max(1),
            retention: Duration::from_secs(s.archive_retention_days.max(1) * 24 * 3600),
        });
        let jwt = jwt_config(&s)?;
        let proxy = proxy_config(&s)?;
        let webhook = webhook_config(&s)?;
        let listen = s.listen;
        listen.parse::<SocketAddr>().with_context(|| {
            format!("--listen {listen:?} is not an address like 127.0.0.1:8080")
        })?;
        let log_json = match s.log_format.as_str() {
            "human" => false,
            "json" => true,
            other => bail!("--log-format must be human or json, not {other:?}"),
        };
        let dedup_window = Duration::from_secs(s.dedup_window_secs);
        if dedup_window < Duration::from_secs(60) {
            bail!("--dedup-window-secs must be at least 60");
        }
        let ping_interval = Duration::from_secs(s.ping_interval_secs.max(1));
        let limits = Limits {
            max_connections: s.max_connections,
            max_connections_per_user: s.max_connections_per_user,
            max_subscriptions: s.max_subscriptions,
            publish_rate: s.publish_rate,
            publish_burst: s.publish_burst.max(1),
            max_rate_limited_per_minute: s.max_rate_limited_per_minute,
            max_bad_frames_per_minute: s.max_bad_frames_per_minute,
            max_frame_size: s.max_frame_size.max(128),
            outbound_queue: s.outbound_queue.max(1),
            ping_interval,
            idle_timeout: Duration::from_secs(s.idle_timeout_secs.max(1)),
            handshake_timeout: Duration::from_secs(s.handshake_timeout_secs.max(1)),
            read_buffer_size: s.read_buffer_size.max(64),
            subscribe_rate: s.subscribe_rate,
            subscribe_burst: s.subscribe_burst.max(1),
            max_http_connections: s.max_http_connections.max(1),
            request_timeout: Duration::from_secs(s.request_timeout_secs.max(1)),
        };
        let allowed_origins = AllowedOrigins::parse(s.allowed_origins.as_deref().unwrap_or(""))?;
        let tls = match (s.tls_cert, s.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together: give both, or neither"),
        };
        let namespaces = Namespace::with_defaults(s.namespaces.clone().unwrap_or_default());
        for ns in &namespaces {
            for (on, kind) in [
                (ns.proxy_subscribe, crate::proxy::Kind::Subscribe),
                (ns.proxy_publish, crate::proxy::Kind::Publish),
            ] {
                if on && proxy.urls[kind as usize].is_none() {
                    bail!(
                        "namespace {:?} has proxy_{} but --proxy-{}-url is not set",
                        ns.prefix,
                        kind.name(),
                        kind.name()
                    );
                }
            }
        }
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
            tls,
            jwt,
            generated_api_key: s.dev && s.api_key.as_deref().is_none_or(str::is_empty),
            api_key: s.api_key.filter(|k| !k.is_empty()).or_else(|| {
                // Dev mode without a key gets a random one (printed at start-up).
                s.dev
                    .then(|| format!("dev-{:032x}", rand::random::<u128>()))
            }),
            dev: s.dev,
            log_json,
            log_filter: s.log,
            limits,
            drain_timeout: Duration::from_secs(s.drain_timeout_secs),
            history_size: s.history_size.max(1),
            history_max_bytes: s.history_max_bytes.max(1),
            history_node_max_bytes: s.history_node_max_bytes.max(1),
            history_ttl: Duration::from_secs(s.history_ttl_secs),
            allowed_origins,
            dedup_window,
            dedup_max_keys: s.dedup_max_keys.max(1),
            direct_messages: s.direct_messages,
            namespaces,
            redis,
            presence_heartbeat: Duration::from_secs(s.presence_heartbeat_secs.max(1)),
            presence_diff_interval: Duration::from_millis(
                s.presence_diff_interval_ms.clamp(10, 60_000),
            ),
            presence_diff_max: s.presence_diff_max,
            archive,
            proxy,
            webhook,
        })
    }
}

/// The webhooks' settings, when `--webhook-url` is given.
fn webhook_config(s: &Settings) -> anyhow::Result<Option<WebhookConfig>> {
    let Some(url) = s
        .webhook_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    else {
        return Ok(None);
    };
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--webhook-url {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        bail!("--webhook-url {url:?}: expected http://host[:port]/path");
    }
    let secret = match s.webhook_secret.as_deref() {
        Some(secret) if secret.len() >= 16 => secret.as_bytes().to_vec(),
        Some(_) => bail!("--webhook-secret is weak: use at least 16 bytes"),
        None => bail!("--webhook-url needs --webhook-secret, which signs every request"),
    };
    let mut events = Vec::new();
    for name in s
        .webhook_events
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let Some(kind) = presence::FeedKind::parse(name) else {
            bail!(
                "--webhook-events: {name:?} is not one of channel_occupied, channel_vacated, \
                 member_added, member_removed, client_event"
            );
        };
        events.push(kind);
    }
    Ok(Some(WebhookConfig {
        url: uri,
        secret,
        key: s.webhook_key.clone(),
        events,
        timeout: Duration::from_millis(s.webhook_timeout_ms.max(1)),
        retry: Duration::from_secs(s.webhook_retry_secs),
        batch: s.webhook_batch.clamp(1, 10_000),
    }))
}

/// The proxies' settings: URLs (`http://` only), timeouts, bounds, the header allow-list.
fn proxy_config(s: &Settings) -> anyhow::Result<crate::proxy::ProxyConfig> {
    use crate::proxy::Kind;
    let given = [
        &s.proxy_connect_url,
        &s.proxy_refresh_url,
        &s.proxy_subscribe_url,
        &s.proxy_publish_url,
        &s.proxy_sub_refresh_url,
        &s.proxy_rpc_url,
    ];
    let mut urls: [Option<http::Uri>; 6] = Default::default();
    for (kind, url) in Kind::ALL.into_iter().zip(given) {
        let Some(url) = url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            continue;
        };
        let flag = format!("--proxy-{}-url", kind.name().replace('_', "-"));
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("{flag} {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            bail!(
                "{flag} {url:?}: expected http://host[:port]/path (TLS to the backend is not \
                 offered: keep the backend on a private network, or behind a local proxy)"
            );
        }
        urls[kind as usize] = Some(uri);
    }
    let mut headers = Vec::new();
    for name in s
        .proxy_headers
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
    {
        let header = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .with_context(|| format!("--proxy-headers: {name:?} is not a header name"))?;
        if header == http::header::CONTENT_TYPE
            || header == http::header::CONTENT_LENGTH
            || header == http::header::HOST
            || header == http::header::TRANSFER_ENCODING
            || header == http::header::CONNECTION
        {
            bail!("--proxy-headers: {name} is the proxy request's own header");
        }
        headers.push(header);
    }
    Ok(crate::proxy::ProxyConfig {
        urls,
        timeout: Duration::from_millis(s.proxy_timeout_ms.max(1)),
        max_in_flight: s.proxy_max_in_flight.max(1),
        breaker_failures: s.proxy_breaker_failures.max(1),
        breaker_open: Duration::from_millis(s.proxy_breaker_open_ms.max(1)),
        max_answer_bytes: s.proxy_max_answer_bytes.max(1024),
        headers,
    })
}

fn jwt_config(s: &Settings) -> anyhow::Result<JwtConfig> {
    use jsonwebtoken::Algorithm;
    let algorithm = match s.jwt_alg.as_str() {
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
        leeway: Duration::from_secs(s.jwt_leeway_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
}
