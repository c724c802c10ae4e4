//! Prometheus metrics: the recorder, and handles to every series the gateway updates.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Handles to the gateway's series, resolved once.
pub struct Metrics {
    /// 1 while draining.
    pub draining: Gauge,
    /// Handshakes accepted, by protocol ([`Metrics::protocol`]).
    pub handshakes_ok: [Counter; 2],
    /// Open connections, by protocol.
    pub connections: [Gauge; 2],
    /// Payload bytes received from clients.
    pub bytes_in: Counter,
    /// Payload bytes written to clients.
    pub bytes_out: Counter,
    /// Outbound queues that overflowed (slow consumers).
    pub queue_overflows: Counter,
    /// From acceptance to the write of the frame carrying it.
    pub publish_to_write: Histogram,
    /// Sockets answered 503 at accept (past `--max-http-connections`).
    pub http_refused: Counter,
    /// TLS handshakes that failed or ran past the handshake timeout (`--tls-cert`).
    pub tls_failed: Counter,
    /// `/emulation` requests for a session on another node, relayed through the broker.
    pub emulation_relayed: Counter,
    /// Payload bytes held in the embedded engine's history.
    pub history_bytes: Gauge,
    /// Connections accepted whose user's home node (`/v1/route`) is another live node.
    pub misrouted: Counter,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The `protocol` label's values: v1 (`/ws`), Centrifugo's (`/connection/websocket`).
const PROTOCOLS: [&str; 2] = ["v1", "centrifuge"];

impl Metrics {
    /// The index of `encoding`'s protocol in the per-protocol series.
    pub fn protocol(encoding: crate::protocol::Encoding) -> usize {
        usize::from(encoding.is_centrifuge())
    }
}

/// The series handles (no-ops until [`install`] ran).
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics {
        draining: gauge!("gateway_draining"),
        handshakes_ok: PROTOCOLS
            .map(|p| counter!("gateway_handshakes_total", "result" => "ok", "protocol" => p)),
        connections: PROTOCOLS.map(|p| gauge!("gateway_protocol_connections", "protocol" => p)),
        bytes_in: counter!("gateway_bytes_in_total"),
        bytes_out: counter!("gateway_bytes_out_total"),
        queue_overflows: counter!("gateway_outbound_queue_overflows_total"),
        publish_to_write: histogram!("gateway_publish_to_write_seconds"),
        http_refused: counter!("gateway_http_refused_total"),
        tls_failed: counter!("gateway_tls_handshake_failures_total"),
        emulation_relayed: counter!("gateway_emulation_relayed_total"),
        misrouted: counter!("gateway_misrouted_connections_total"),
        history_bytes: gauge!("gateway_history_bytes"),
    })
}

/// Copies the hub's counters into their series (called before each scrape): the hub's atomics
/// are the one count of connections, subscriptions, publishes and deliveries, read also by
/// `NodeCommand::Stats`.
pub fn record_node_stats(stats: &fanout::NodeStats) {
    gauge!("gateway_connections").set(stats.connections as f64);
    gauge!("gateway_subscriptions").set(stats.subscriptions as f64);
    counter!("gateway_messages_published_total").absolute(stats.published);
    counter!("gateway_messages_delivered_total").absolute(stats.delivered);
}

/// Copies the broker's delivery counters into their series (called before each scrape).
pub fn record_delivery_stats(stats: fanout::DeliveryStats) {
    counter!("gateway_broker_gaps_total").absolute(stats.gaps);
    counter!("gateway_broker_healed_total").absolute(stats.healed);
    counter!("gateway_broker_lagged_total").absolute(stats.lagged);
    counter!("gateway_broker_lost_total").absolute(stats.lost);
    counter!("gateway_broker_bad_envelopes_total").absolute(stats.bad_envelopes);
    counter!("gateway_broker_moved_total").absolute(stats.moved);
    metrics().history_bytes.set(stats.history_bytes as f64);
}

/// Copies the archive path's counters into their series (called before each scrape).
pub fn record_archive_stats(stats: &fanout::archive::ArchiveStats) {
    use std::sync::atomic::Ordering::Relaxed;
    gauge!("gateway_archive_pending").set(stats.pending.load(Relaxed) as f64);
    gauge!("gateway_archive_lag_seconds").set(stats.lag_secs());
    gauge!("gateway_archive_last_batch").set(stats.last_batch.load(Relaxed) as f64);
    gauge!("gateway_archive_breaker_open")
        .set(f64::from(u8::from(stats.breaker_open.load(Relaxed))));
    counter!("gateway_archive_written_total").absolute(stats.written.load(Relaxed));
    counter!("gateway_archive_batches_total").absolute(stats.batches.load(Relaxed));
    counter!("gateway_archive_failures_total").absolute(stats.failures.load(Relaxed));
    counter!("gateway_archive_refused_total").absolute(stats.refused.load(Relaxed));
}

/// Sets the health gauges (called before each scrape): `gateway_ready` as `/readyz` answers,
/// `gateway_broker_up` while the message backend answers.
pub fn record_health(ready: bool, broker_up: bool) {
    gauge!("gateway_ready").set(f64::from(u8::from(ready)));
    gauge!("gateway_broker_up").set(f64::from(u8::from(broker_up)));
}

/// How many written batches per thread give one `gateway_publish_to_write_seconds` sample.
const PUBLISH_TO_WRITE_SAMPLING: u32 = 8;

/// Records the latency of one written batch in eight per thread (the first one included):
/// the histogram's store takes a shared lock-free push per sample, which at one batch per
/// delivery (below saturation every push is its own write) was 1.3 % of the node's CPU. One
/// in eight, uniform, describes the same distribution.
pub fn sample_publish_to_write(oldest: std::time::Instant) {
    thread_local! {
        static BATCHES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    let due = BATCHES.with(|n| {
        let count = n.get();
        n.set(count.wrapping_add(1));
        count % PUBLISH_TO_WRITE_SAMPLING == 0
    });
    if due {
        metrics()
            .publish_to_write
            .record(oldest.elapsed().as_secs_f64());
    }
}

/// Counts a refused handshake by result (`unauthorized`, `bad_subprotocol`, ...).
pub fn handshake_refused(result: &'static str) {
    counter!("gateway_handshakes_total", "result" => result).increment(1);
}

/// Counts a server-initiated disconnect by code.
pub fn disconnect(code: &'static str) {
    counter!("gateway_disconnects_total", "code" => code).increment(1);
}

/// Installs the Prometheus recorder; call once, before [`metrics`].
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("gateway_publish_to_write_seconds".into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ],
        )?
        .install_recorder()?;
    metrics().draining.set(0.0);
    Ok(handle)
}
