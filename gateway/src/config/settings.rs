//! Every setting, stated once: flag, environment variable, default and help (clap), and the
//! TOML file (`--config`) read through the same parser.

use crate::acl::Namespace;
use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;
use std::path::PathBuf;

/// Every setting, as given on the command line, in the environment or in the config file.
/// Each is stated once, here: its flag, variable, default and help; a config file key is the
/// field's name. Unset ones fall back to the file, then to the default.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "gateway",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GATEWAY_GIT_COMMIT"), ")"),
    about = "WebSocket real-time messaging gateway"
)]
pub struct Settings {
    /// TOML file with any of these settings (snake_case keys) and `[[namespaces]]`.
    #[arg(long, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// This node's id [default: generated].
    #[arg(long, env = "GATEWAY_NODE_ID")]
    pub node_id: Option<String>,
    /// WebSocket URL clients reach this node at [default: ws://<listen>/ws, or wss:// with
    /// --tls-cert].
    #[arg(long, env = "GATEWAY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// PEM certificate chain: the node serves TLS on --listen (`wss://`, `https://`, HTTP/1.1),
    /// and reads the certificate and key again on SIGHUP. Needs --tls-key.
    #[arg(long, env = "GATEWAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "GATEWAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// HS256 secret, at least 32 bytes (required unless --dev or a public key is used).
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Token algorithm: HS256, RS256 or EdDSA.
    #[arg(long, env = "GATEWAY_JWT_ALG", default_value = "HS256")]
    pub jwt_alg: String,
    /// PEM public key file for RS256 or EdDSA.
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`, seconds.
    #[arg(long, env = "GATEWAY_JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,
    /// Key for the `/api/` endpoints (`Authorization: Bearer <key>`); unset disables the API.
    #[arg(long, env = "GATEWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Redis URL for clustered mode: one Redis (`redis://host:port/db`) or a Redis Cluster
    /// (`redis-cluster://host:port?node=host:port&node=host:port`, any of its nodes); Redis
    /// 7 or newer. Unset runs the embedded engine.
    #[arg(long, env = "GATEWAY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and pub/sub channel (one cluster per prefix).
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "gw")]
    pub redis_prefix: String,
    /// Partitions the channels are spread over in Redis (hash-tagged key groups: one slot of
    /// a Redis Cluster each, with their own archive stream); the same on every node, fixed
    /// for the life of the data (a node refuses to start on another count).
    #[arg(long, env = "GATEWAY_REDIS_PARTITIONS", default_value_t = 16)]
    pub redis_partitions: usize,
    /// Capacity of the node's Redis pub/sub receiver, messages; a node that falls further
    /// behind heals from history.
    #[arg(long, env = "GATEWAY_REDIS_PUBSUB_CAPACITY", default_value_t = 4096)]
    pub redis_pubsub_capacity: usize,
    /// Seconds between checks of the positions of subscribed channels with recent traffic
    /// against Redis (finds a lost last message of a burst).
    #[arg(long, env = "GATEWAY_POSITION_CHECK_SECS", default_value_t = 5)]
    pub position_check_secs: u64,
    /// Seconds over which every subscribed channel's position, quiet ones included, is
    /// checked once, a slice at each check.
    #[arg(long, env = "GATEWAY_POSITION_SWEEP_SECS", default_value_t = 60)]
    pub position_sweep_secs: u64,
    /// Seconds between presence heartbeats; a dead node's users leave after about three.
    #[arg(long, env = "GATEWAY_PRESENCE_HEARTBEAT_SECS", default_value_t = 10)]
    pub presence_heartbeat_secs: u64,
    /// Milliseconds over which presence changes are gathered into one `presence_diff` push
    /// per channel.
    #[arg(long, env = "GATEWAY_PRESENCE_DIFF_INTERVAL_MS", default_value_t = 250)]
    pub presence_diff_interval_ms: u64,
    /// Most users one `presence_diff` lists; past it the push says `overflow` instead.
    #[arg(long, env = "GATEWAY_PRESENCE_DIFF_MAX", default_value_t = 200)]
    pub presence_diff_max: usize,
    /// Message archive: `sqlite://PATH` (embedded mode), `postgres://...`, or `off`
    /// [default: embedded mode `sqlite://<data-dir>/archive.db`; clustered mode off].
    #[arg(long, env = "GATEWAY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory for the embedded archive.
    #[arg(long, env = "GATEWAY_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Messages waiting for the archive before publishes wait, then get `unavailable`.
    #[arg(long, env = "GATEWAY_ARCHIVE_QUEUE", default_value_t = 100000)]
    pub archive_queue: usize,
    /// Days archived messages are kept.
    #[arg(long, env = "GATEWAY_ARCHIVE_RETENTION_DAYS", default_value_t = 365)]
    pub archive_retention_days: u64,
    /// Development mode: `POST /dev/token` mints tokens, a random JWT secret is used if none.
    #[arg(long, env = "GATEWAY_DEV")]
    pub dev: bool,
    /// Log format: human or json.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", default_value = "human")]
    pub log_format: String,
    /// Log filter, tracing syntax.
    #[arg(long, env = "GATEWAY_LOG", default_value = "info")]
    pub log: String,
    /// Most concurrent connections on this node; more get 503.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 100000)]
    pub max_connections: usize,
    /// Most concurrent connections of one user on this node; more get 429.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_USER", default_value_t = 10)]
    pub max_connections_per_user: usize,
    /// Most subscriptions per connection, the personal channel not counted.
    #[arg(long, env = "GATEWAY_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: usize,
    /// Publishes per second per connection (token bucket refill).
    #[arg(long, env = "GATEWAY_PUBLISH_RATE", default_value_t = 100)]
    pub publish_rate: u32,
    /// Publish burst per connection (token bucket size).
    #[arg(long, env = "GATEWAY_PUBLISH_BURST", default_value_t = 100)]
    pub publish_burst: u32,
    /// Subscribes and unsubscribes per second per connection (token bucket refill)
    #[arg(long, env = "GATEWAY_SUBSCRIBE_RATE", default_value_t = 10)]
    pub subscribe_rate: u32,
    /// Subscribe and unsubscribe burst per connection (token bucket size).
    #[arg(long, env = "GATEWAY_SUBSCRIBE_BURST", default_value_t = 200)]
    pub subscribe_burst: u32,
    /// Rejected publishes per minute before disconnecting with 4003.
    #[arg(
        long,
        env = "GATEWAY_MAX_RATE_LIMITED_PER_MINUTE",
        default_value_t = 100
    )]
    pub max_rate_limited_per_minute: u32,
    /// Malformed frames per minute before disconnecting with `policy`.
    #[arg(long, env = "GATEWAY_MAX_BAD_FRAMES_PER_MINUTE", default_value_t = 10)]
    pub max_bad_frames_per_minute: u32,
    /// Largest frame or message accepted, bytes; larger closes with 1009.
    #[arg(long, env = "GATEWAY_MAX_FRAME_SIZE", default_value_t = 65536)]
    pub max_frame_size: usize,
    /// Outbound queue per connection, frames; overflow disconnects with 4002.
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// Seconds between server pings.
    #[arg(long, env = "GATEWAY_PING_INTERVAL_SECS", default_value_t = 25)]
    pub ping_interval_secs: u64,
    /// Seconds without any frame from the client before 4004.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Most concurrent HTTP connections not (yet) upgraded to WebSocket: API calls, handshakes
    /// in progress, idle keep-alives; more are answered 503 at accept.
    #[arg(long, env = "GATEWAY_MAX_HTTP_CONNECTIONS", default_value_t = 10000)]
    pub max_http_connections: usize,
    /// Seconds an HTTP request has to send its body.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    pub request_timeout_secs: u64,
    /// Origins allowed to open `/ws` from a browser, comma-separated (`https://app.example`),
    /// besides the gateway's own origin; `*` allows any. Requests without `Origin` (not from a
    /// browser) are always allowed [default: own origin only].
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Seconds a new TCP connection has to send its HTTP request.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,
    /// Seconds a drain may take before the process exits anyway.
    #[arg(long, env = "GATEWAY_DRAIN_TIMEOUT_SECS", default_value_t = 10)]
    pub drain_timeout_secs: u64,
    /// Messages of history kept per channel.
    #[arg(long, env = "GATEWAY_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: usize,
    /// Bytes of payload kept in one channel's history (the newest message is always kept).
    #[arg(long, env = "GATEWAY_HISTORY_MAX_BYTES", default_value_t = 4194304)]
    pub history_max_bytes: usize,
    /// Bytes of payload kept in all the node's history together, embedded engine.
    #[arg(
        long,
        env = "GATEWAY_HISTORY_NODE_MAX_BYTES",
        default_value_t = 268435456
    )]
    pub history_node_max_bytes: usize,
    /// Seconds a message stays in history.
    #[arg(long, env = "GATEWAY_HISTORY_TTL_SECS", default_value_t = 300)]
    pub history_ttl_secs: u64,
    /// Seconds an idempotency key is remembered (at least 60).
    #[arg(long, env = "GATEWAY_DEDUP_WINDOW_SECS", default_value_t = 120)]
    pub dedup_window_secs: u64,
    /// Most idempotency keys remembered per channel; new keys past it get `unavailable`
    /// until old ones expire.
    #[arg(long, env = "GATEWAY_DEDUP_MAX_KEYS", default_value_t = 100000)]
    pub dedup_max_keys: usize,
    /// Whether any user may publish to another's `user:<id>` channel.
    #[arg(long, env = "GATEWAY_DIRECT_MESSAGES", action = clap::ArgAction::Set, default_value_t = true)]
    pub direct_messages: bool,
    /// Worker threads [default: one per CPU]: each runs a single-threaded runtime with its
    /// own listener on the port (SO_REUSEPORT), and a connection stays on the worker that
    /// accepted it.
    #[arg(long, env = "GATEWAY_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// WebSocket read buffer per connection, bytes.
    #[arg(long, env = "GATEWAY_READ_BUFFER_SIZE", default_value_t = 512)]
    pub read_buffer_size: usize,
    /// Connect proxy: a connection without a token is sent (its allow-listed headers and
    /// `connect` data) to this `http://` URL, which answers who it is (docs/proxies.md).
    #[arg(long, env = "GATEWAY_PROXY_CONNECT_URL")]
    pub proxy_connect_url: Option<String>,
    /// Refresh proxy: asked when a proxied connection's `expire_at` comes.
    #[arg(long, env = "GATEWAY_PROXY_REFRESH_URL")]
    pub proxy_refresh_url: Option<String>,
    /// Subscribe proxy: decides subscribes in namespaces with `proxy_subscribe`.
    #[arg(long, env = "GATEWAY_PROXY_SUBSCRIBE_URL")]
    pub proxy_subscribe_url: Option<String>,
    /// Publish proxy: decides (and may rewrite) publishes in namespaces with `proxy_publish`.
    #[arg(long, env = "GATEWAY_PROXY_PUBLISH_URL")]
    pub proxy_publish_url: Option<String>,
    /// Sub_refresh proxy: asked when a proxied subscription's `expire_at` comes.
    #[arg(long, env = "GATEWAY_PROXY_SUB_REFRESH_URL")]
    pub proxy_sub_refresh_url: Option<String>,
    /// RPC proxy: serves clients' `rpc` calls.
    #[arg(long, env = "GATEWAY_PROXY_RPC_URL")]
    pub proxy_rpc_url: Option<String>,
    /// Milliseconds a proxy call may take; then the client gets `unavailable`.
    #[arg(long, env = "GATEWAY_PROXY_TIMEOUT_MS", default_value_t = 3000)]
    pub proxy_timeout_ms: u64,
    /// Most calls in flight per proxy endpoint; more are refused at once (`backend busy`).
    #[arg(long, env = "GATEWAY_PROXY_MAX_IN_FLIGHT", default_value_t = 256)]
    pub proxy_max_in_flight: usize,
    /// Failed calls in a row that open a proxy endpoint's circuit breaker.
    #[arg(long, env = "GATEWAY_PROXY_BREAKER_FAILURES", default_value_t = 5)]
    pub proxy_breaker_failures: u32,
    /// Milliseconds an open breaker refuses calls before a probe.
    #[arg(long, env = "GATEWAY_PROXY_BREAKER_OPEN_MS", default_value_t = 5000)]
    pub proxy_breaker_open_ms: u64,
    /// Largest proxy answer read, bytes; a longer one is a failed call.
    #[arg(
        long,
        env = "GATEWAY_PROXY_MAX_ANSWER_BYTES",
        default_value_t = 1048576
    )]
    pub proxy_max_answer_bytes: usize,
    /// Client request headers sent with proxy calls, comma-separated.
    #[arg(
        long,
        env = "GATEWAY_PROXY_HEADERS",
        default_value = "cookie,origin,user-agent,x-forwarded-for,x-real-ip"
    )]
    pub proxy_headers: String,
    /// Webhooks: events of channels in namespaces with `webhooks = true` are POSTed to this
    /// `http://` URL, batched, signed, once per cluster (docs/webhooks.md).
    #[arg(long, env = "GATEWAY_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Secret the webhook bodies are signed with (HMAC-SHA256, `X-Pusher-Signature`); at least
    /// 16 bytes. Required with --webhook-url.
    #[arg(long, env = "GATEWAY_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// The `X-Pusher-Key` header of webhook requests (which app's secret signed them).
    #[arg(long, env = "GATEWAY_WEBHOOK_KEY", default_value = "gateway")]
    pub webhook_key: String,
    /// Events sent, comma-separated: channel_occupied, channel_vacated, member_added,
    /// member_removed, client_event.
    #[arg(
        long,
        env = "GATEWAY_WEBHOOK_EVENTS",
        default_value = "channel_occupied,channel_vacated,member_added,member_removed"
    )]
    pub webhook_events: String,
    /// Milliseconds one webhook request may take.
    #[arg(long, env = "GATEWAY_WEBHOOK_TIMEOUT_MS", default_value_t = 5000)]
    pub webhook_timeout_ms: u64,
    /// Seconds a batch is retried (exponential backoff with jitter) before its events are
    /// dropped and counted as dead letters.
    #[arg(long, env = "GATEWAY_WEBHOOK_RETRY_SECS", default_value_t = 600)]
    pub webhook_retry_secs: u64,
    /// Most events in one webhook request.
    #[arg(long, env = "GATEWAY_WEBHOOK_BATCH", default_value_t = 100)]
    pub webhook_batch: usize,
    /// Namespaces (config file only): prefix, open, client_publish, presence.
    #[arg(skip)]
    pub namespaces: Option<Vec<Namespace>>,
}

impl Settings {
    /// Parses flags and environment, then fills gaps from the `--config` file.
    pub fn load() -> anyhow::Result<Self> {
        Self::load_from(std::env::args_os())
    }

    /// [`load`](Self::load) from the given arguments (the first is the program name).
    ///
    /// The file's settings become arguments placed before the real ones, for the settings
    /// neither the command line nor the environment gave, and everything is parsed once
    /// more: one parser (clap's) reads every source, so a value means the same wherever it
    /// is written.
    pub fn load_from(
        args: impl IntoIterator<Item = impl Into<std::ffi::OsString>>,
    ) -> anyhow::Result<Self> {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let command = Self::command();
        let matches = command.clone().get_matches_from(&args);
        let settings = Self::from_arg_matches(&matches)?;
        let Some(path) = settings.config.clone() else {
            return Ok(settings);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let file = path.display();
        // toml's own message draws the line with a caret under it over several lines;
        // a configuration error is one line (docs/protocol.md): position and reason.
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            let at = e.span().map_or(String::new(), |span| at(&text, span.start));
            anyhow::anyhow!("parsing config file {file}{at}: {}", e.message().trim())
        })?;
        let mut merged = vec![args.first().cloned().unwrap_or_else(|| "gateway".into())];
        let mut namespaces = None;
        for (key, value) in table {
            let where_ = key_offset(&text, &key).map_or(String::new(), |i| at(&text, i));
            if key == "namespaces" {
                let list = Vec::<Namespace>::deserialize(value).map_err(|e| {
                    let e = e.to_string().replace('\n', " ");
                    anyhow::anyhow!("config file {file}{where_}: namespaces: {}", e.trim())
                })?;
                namespaces = Some(list);
                continue;
            }
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == key.as_str() && key != "config" && a.get_long().is_some());
            let Some(arg) = arg else {
                bail!("config file {file}{where_}: unknown setting `{key}`");
            };
            if matches!(
                matches.value_source(&key),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!(
                    "config file {file}{where_}: `{key}` must be a string, an integer or a \
                     boolean, not {}",
                    other.type_str()
                ),
            };
            let long = arg.get_long().unwrap_or(&key);
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                match value.as_str() {
                    "true" => merged.push(format!("--{long}").into()),
                    "false" => {}
                    _ => bail!("config file {file}{where_}: `{key}` must be true or false"),
                }
            } else {
                merged.push(format!("--{long}={value}").into());
            }
        }
        merged.extend(args.into_iter().skip(1));
        let matches = command.try_get_matches_from(merged).map_err(|e| {
            let message = e.to_string();
            let first = message.lines().next().unwrap_or_default();
            anyhow::anyhow!(
                "config file {file}: {}",
                first.trim_start_matches("error: ")
            )
        })?;
        let mut settings = Self::from_arg_matches(&matches)?;
        settings.namespaces = namespaces;
        Ok(settings)
    }
}

/// Where `key = ...` (or a `[[key]]` table) starts in a TOML text: for error messages.
fn key_offset(text: &str, key: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let rest = trimmed.trim_start_matches('[');
        if let Some(after) = rest.strip_prefix(key)
            && after.trim_start().starts_with(['=', ']'])
        {
            return Some(offset + (line.len() - trimmed.len()));
        }
        offset += line.len();
    }
    None
}

/// ` at line L, column C` of byte `offset` in `text`.
fn at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(" at line {line}, column {column}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A config file in a fresh temporary directory.
    fn file(text: &str) -> (PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("gw-config-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let arg = path.display().to_string();
        (path, arg)
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let (_path, arg) = file(
            "max_subscriptions = 2\npublish_rate = 3\ndev = true\ndirect_messages = false\n\
             listen = \"127.0.0.1:9\"\n[[namespaces]]\nprefix = \"news:\"\nopen = true\n\
             client_publish = false\npresence = false\n",
        );
        let s =
            Settings::load_from(["gateway", "--max-subscriptions", "7", "--config", &arg]).unwrap();
        assert!(s.dev);
        assert!(!s.direct_messages);
        let c = Config::from_settings(s).unwrap();
        assert_eq!(c.limits.max_subscriptions, 7, "the flag wins");
        assert_eq!(c.limits.publish_rate, 3, "the file fills the rest");
        assert_eq!(c.listen.to_string(), "127.0.0.1:9");
        // Untouched settings keep their defaults.
        assert_eq!(c.limits.publish_burst, 100);
        // `news:` is added to the default `room:`.
        assert_eq!(c.namespaces.len(), 2);
    }

    #[test]
    fn bad_file_settings_name_the_file_the_key_and_the_line() {
        for (text, wanted) in [
            (
                "publish_rate = 3\nnope = 1\n",
                "line 2, column 1: unknown setting `nope`",
            ),
            ("config = \"x.toml\"\n", "unknown setting `config`"),
            ("max_subscriptions = \"lots\"\n", "invalid value 'lots'"),
            (
                "max_subscriptions = [1]\n",
                "`max_subscriptions` must be a string",
            ),
            ("dev = \"yes\"\n", "`dev` must be true or false"),
            ("[[namespaces]]\nprefix = 3\n", "namespaces"),
        ] {
            let (_path, arg) = file(text);
            let err = Settings::load_from(["gateway", "--config", &arg])
                .unwrap_err()
                .to_string();
            assert!(err.contains(wanted), "{text:?}: {err}");
            assert!(err.contains("gateway.toml"), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn help_file_keys_and_readme_table_agree() {
        // README.md's settings table: | `GATEWAY_X` | `--x` | default | what |
        let readme = include_str!("../../../README.md");
        let rows: Vec<Vec<&str>> = readme
            .lines()
            .filter(|l| l.starts_with("| `GATEWAY_"))
            .map(|l| l.split(" | ").map(|c| c.trim_matches(['|', ' '])).collect())
            .collect();
        let command = Settings::command();
        let args: Vec<_> = command
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| l != "help" && l != "version"))
            .collect();
        assert_eq!(rows.len(), args.len(), "one README row per setting");
        for arg in args {
            let long = arg.get_long().unwrap();
            // The file key is the flag in snake_case.
            assert_eq!(arg.get_id().as_str(), long.replace('-', "_"));
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert_eq!(
                env,
                format!("GATEWAY_{}", long.replace('-', "_").to_uppercase())
            );
            let row = rows
                .iter()
                .find(|r| r[0] == format!("`{env}`"))
                .unwrap_or_else(|| panic!("README.md lacks {env}"));
            assert_eq!(row[1], format!("`--{long}`"), "{env}");
            let defaults: Vec<_> = arg.get_default_values().iter().collect();
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                assert_eq!(row[2], "off", "{env}: a flag is off unless given");
                continue;
            }
            match defaults.as_slice() {
                [value] => assert_eq!(
                    row[2],
                    format!("`{}`", value.to_string_lossy()),
                    "{env}: README's default against --help's"
                ),
                // No fixed default: README says none, or the help text says what it is.
                _ => assert!(
                    row[2].starts_with('—')
                        || arg
                            .get_help()
                            .is_some_and(|h| h.to_string().contains("[default: ")),
                    "{env}: {row:?}"
                ),
            }
        }
    }
}
