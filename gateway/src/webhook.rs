//! The webhooks: what happens in channels of namespaces with `webhooks = true`, POSTed to the
//! app's backend (`--webhook-url`) in Pusher's shape, so that it hears when a room becomes
//! occupied or empty and when members come and go (to notify users who are offline, say).
//!
//! The events are presence's transitions, recorded in presence's change feed atomically with
//! the transition itself: once per cluster (the one node whose call made the transition
//! records it) and, per channel, in the order they happened (a channel's transitions and its
//! feed are in one partition). One node at a time leads the feed (a lease in the backend) and
//! sends: it reads a batch, signs it (HMAC-SHA256 of the body, `X-Pusher-Signature`), POSTs
//! it, and only then removes it from the feed. A failed request is retried, in order, with
//! exponential backoff and jitter, until `--webhook-retry-secs` have passed; then its events
//! are dropped and counted as dead letters. If the leader dies, the next one sends again what
//! it had read and not acknowledged: each event carries an `id` that stays the same, so that
//! the receiver can drop a repeat.

use crate::config::WebhookConfig;
use crate::node::Node;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use metrics::{counter, gauge};
use presence::FeedEvent;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The shortest lead: a lead lasts twice the longest time between two renewals (the leader
/// renews it before each read and after each backoff, so at most one request or one backoff
/// comes between two), and at least this.
const MIN_LEASE: Duration = Duration::from_secs(10);
/// How often a node that does not lead asks again.
const STANDBY_POLL: Duration = Duration::from_secs(2);
/// How often the leader looks for new events when the feed was empty.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// The first retry's delay, doubled at each failure up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most bytes of a receiver's answer read (and dropped).
const MAX_ANSWER: usize = 64 << 10;

/// The sender's state, for `/api/proxies` and the admin page.
#[derive(Default)]
pub struct WebhookStats {
    requests: AtomicU64,
    failures: AtomicU64,
    delivered: AtomicU64,
    dead_letters: AtomicU64,
    leading: AtomicBool,
    retrying: AtomicBool,
    last_error: parking_lot::Mutex<Option<String>>,
}

/// The webhooks' health.
#[derive(Debug, Serialize)]
pub struct Health {
    /// Whether this node sends them now (one node of the cluster does).
    pub leader: bool,
    /// Requests made by this node (retries included).
    pub requests: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Events delivered by this node.
    pub delivered: u64,
    /// Events dropped after `--webhook-retry-secs` of failures.
    pub dead_letters: u64,
    /// `ok`, `retrying` (the receiver fails; the batch waits) or `standby` (another node
    /// leads).
    pub state: &'static str,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

impl WebhookStats {
    /// The health as the admin page shows it.
    pub fn health(&self) -> Health {
        let leader = self.leading.load(Ordering::Relaxed);
        Health {
            leader,
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            state: match (leader, self.retrying.load(Ordering::Relaxed)) {
                (false, _) => "standby",
                (true, true) => "retrying",
                (true, false) => "ok",
            },
            last_error: self.last_error.lock().clone(),
        }
    }
}

/// One event as the receiver gets it (Pusher's fields, plus `id` and `time_ms`).
#[derive(Serialize)]
struct Event<'a> {
    name: &'static str,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    /// client_event: what was published, JSON text, and the event's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    /// The same for every attempt and every node: the receiver's idempotency key.
    id: &'a str,
    time_ms: u64,
}

#[derive(Serialize)]
struct Batch<'a> {
    time_ms: u64,
    events: Vec<Event<'a>>,
}

/// The body of a request carrying `events`.
fn body(events: &[FeedEvent]) -> Vec<u8> {
    let batch = Batch {
        time_ms: fanout::util::unix_millis(),
        events: events
            .iter()
            .map(|e| {
                let client = e.kind == presence::FeedKind::ClientEvent;
                Event {
                    name: e.kind.name(),
                    channel: &e.channel,
                    user_id: e.user.as_deref(),
                    event: client.then_some("publish"),
                    data: e.data.as_deref(),
                    id: &e.id,
                    time_ms: e.time_ms,
                }
            })
            .collect(),
    };
    serde_json::to_vec(&batch).unwrap_or_default()
}

/// `X-Pusher-Signature`: the lowercase hex HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// How sending one batch ended.
enum Sent {
    /// The receiver took it.
    Delivered,
    /// It failed for longer than the retry bound: its events are dead letters.
    Dropped,
    /// Another node leads now: it sends the batch again.
    LostLead,
}

/// The sender: one per node; it sends only while its node leads the feed.
pub struct Sender {
    config: WebhookConfig,
    client: HttpClient<HttpConnector, Full<Bytes>>,
    stats: Arc<WebhookStats>,
}

impl Sender {
    /// A sender with `config`, reporting into `stats`.
    pub fn new(config: WebhookConfig, stats: Arc<WebhookStats>) -> Self {
        let client = crate::proxy::backend_client(config.timeout);
        // Every series from the start, at zero.
        gauge!("gateway_webhook_retrying").set(0.0);
        for result in ["ok", "failed"] {
            counter!("gateway_webhook_requests_total", "result" => result).increment(0);
        }
        counter!("gateway_webhook_events_total").increment(0);
        counter!("gateway_webhook_dead_letters_total").increment(0);
        Self {
            config,
            client,
            stats,
        }
    }

    /// How long a lead lasts unless renewed (see [`MIN_LEASE`]).
    fn lease(&self) -> Duration {
        ((self.config.timeout + BACKOFF_MAX) * 2).max(MIN_LEASE)
    }

    /// Sends until the node shuts down (the caller's task is cancelled then).
    pub async fn run(self, node: Arc<Node>) {
        let presence = node.presence.clone();
        loop {
            match presence.feed_lead(self.lease()).await {
                Ok(true) => self.stats.leading.store(true, Ordering::Relaxed),
                Ok(false) => {
                    self.stats.leading.store(false, Ordering::Relaxed);
                    tokio::time::sleep(STANDBY_POLL).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook feed unavailable");
                    tokio::time::sleep(STANDBY_POLL).await;
                    continue;
                }
            }
            let events = match presence.feed_read(self.config.batch).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the webhook feed failed");
                    tokio::time::sleep(STANDBY_POLL).await;
                    continue;
                }
            };
            if events.is_empty() {
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
            // Recorded but not asked for (`--webhook-events`): acknowledged unsent.
            let wanted: Vec<FeedEvent> = events
                .iter()
                .filter(|e| self.config.events.contains(&e.kind))
                .cloned()
                .collect();
            if !wanted.is_empty() {
                match self.send(&node, &wanted).await {
                    Sent::Delivered => {
                        self.stats
                            .delivered
                            .fetch_add(wanted.len() as u64, Ordering::Relaxed);
                        counter!("gateway_webhook_events_total").increment(wanted.len() as u64);
                    }
                    Sent::Dropped => {
                        self.stats
                            .dead_letters
                            .fetch_add(wanted.len() as u64, Ordering::Relaxed);
                        counter!("gateway_webhook_dead_letters_total")
                            .increment(wanted.len() as u64);
                        tracing::warn!(
                            events = wanted.len(),
                            "webhook receiver failed past --webhook-retry-secs: events dropped"
                        );
                    }
                    Sent::LostLead => continue,
                }
            }
            // Should this fail, the events stay pending and are sent again (same ids).
            if let Err(e) = presence.feed_ack(&events).await {
                tracing::warn!(error = %e, "acknowledging webhook events failed");
            }
        }
    }

    /// Sends one batch, retrying while it fails, within the retry bound and the lead.
    async fn send(&self, node: &Node, events: &[FeedEvent]) -> Sent {
        let body = Bytes::from(body(events));
        let signature = signature(&self.config.secret, &body);
        let started = Instant::now();
        let mut backoff = BACKOFF_BASE;
        loop {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            match self.post(body.clone(), &signature).await {
                Ok(()) => {
                    counter!("gateway_webhook_requests_total", "result" => "ok").increment(1);
                    self.stats.retrying.store(false, Ordering::Relaxed);
                    gauge!("gateway_webhook_retrying").set(0.0);
                    return Sent::Delivered;
                }
                Err(e) => {
                    counter!("gateway_webhook_requests_total", "result" => "failed").increment(1);
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "webhook request failed");
                    *self.stats.last_error.lock() = Some(e);
                    self.stats.retrying.store(true, Ordering::Relaxed);
                    gauge!("gateway_webhook_retrying").set(1.0);
                }
            }
            if started.elapsed() >= self.config.retry {
                self.stats.retrying.store(false, Ordering::Relaxed);
                gauge!("gateway_webhook_retrying").set(0.0);
                return Sent::Dropped;
            }
            // Equal jitter: half the backoff, plus up to as much again at random, so that
            // nodes and batches do not retry in step.
            let half = backoff / 2;
            let jitter = half.mul_f64(rand::random::<f64>());
            tokio::time::sleep(half + jitter).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if !matches!(node.presence.feed_lead(self.lease()).await, Ok(true)) {
                self.stats.leading.store(false, Ordering::Relaxed);
                self.stats.retrying.store(false, Ordering::Relaxed);
                return Sent::LostLead;
            }
        }
    }

    /// One request: `Ok` for a 2xx answer within the timeout. Redirects are not followed.
    async fn post(&self, body: Bytes, signature: &str) -> Result<(), String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.config.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("x-pusher-key", &self.config.key)
            .header("x-pusher-signature", signature)
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("connection: {e}"))?;
            let status = response.status();
            // Read (and drop) a bounded answer, so that the connection can be kept.
            let _ = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("answered HTTP {}", status.as_u16()))
            }
        };
        match tokio::time::timeout(self.config.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err("timeout".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
