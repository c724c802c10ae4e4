//! The final report: a table on stdout and the JSON document `--json` writes.

use crate::cli::Scenario;
use crate::stats::Stats;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// Server memory and CPU at one moment.
#[derive(Debug, Clone, Default)]
pub struct ServerSample {
    /// RSS summed over the given pids, KiB.
    pub rss_kib: Option<f64>,
    /// CPU seconds summed over the given pids.
    pub cpu_secs: Option<f64>,
}

/// Percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
        Some(Self {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1e6,
        })
    }
}

/// The report of one run.
#[derive(Debug, Serialize)]
pub struct Report {
    scenario: &'static str,
    workers: usize,
    connections: u64,
    connect_rate: Option<f64>,
    handshake_ms: Option<Percentiles>,
    server_rss_kib_before: Option<f64>,
    server_rss_kib_after: Option<f64>,
    rss_per_connection_kib: Option<f64>,
    latency_ms: Option<Percentiles>,
    sent: u64,
    expected: u64,
    received: u64,
    lost: u64,
    deliveries_per_sec: Option<f64>,
    gaps: u64,
    duplicates: u64,
    reorders: u64,
    errors: BTreeMap<String, u64>,
    server_cpu_secs: Option<f64>,
    server_cpu_us_per_delivery: Option<f64>,
    server_cpu_us_per_connect: Option<f64>,
    duration_secs: f64,
}

fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(b? - a?)
}

impl Report {
    /// Builds the report from the merged counts and the server samples: `before` the run,
    /// the peak RSS while running, and the samples when the measured phase started and ended.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        scenario: &Scenario,
        stats: &Stats,
        workers: usize,
        before: &ServerSample,
        run_peak_rss: Option<f64>,
        started: Instant,
        run_start: &(Instant, ServerSample),
        run_end: &(Instant, ServerSample),
    ) -> Report {
        let connect_secs = run_start.0.duration_since(started).as_secs_f64();
        let run_secs = run_end.0.duration_since(run_start.0).as_secs_f64();
        let rss_after = run_peak_rss.or(run_start.1.rss_kib);
        let run_cpu = diff(run_start.1.cpu_secs, run_end.1.cpu_secs);
        let connect_cpu = diff(before.cpu_secs, run_start.1.cpu_secs);
        let per = |total: Option<f64>, n: u64| total.filter(|_| n > 0).map(|t| t * 1e6 / n as f64);
        Report {
            scenario: scenario.name(),
            workers,
            connections: stats.connected,
            connect_rate: (connect_secs > 0.0).then(|| stats.connected as f64 / connect_secs),
            handshake_ms: Percentiles::of(&stats.handshake),
            server_rss_kib_before: before.rss_kib,
            server_rss_kib_after: rss_after,
            rss_per_connection_kib: diff(before.rss_kib, rss_after)
                .filter(|_| stats.connected > 0)
                .map(|d| d / stats.connected as f64),
            latency_ms: Percentiles::of(&stats.latency),
            sent: stats.sent,
            expected: stats.expected,
            received: stats.received,
            lost: stats.expected.saturating_sub(stats.received),
            deliveries_per_sec: (run_secs > 0.0 && stats.received > 0)
                .then(|| stats.received as f64 / run_secs),
            gaps: stats.gaps,
            duplicates: stats.duplicates,
            reorders: stats.reorders,
            errors: stats.errors.clone(),
            server_cpu_secs: run_cpu,
            server_cpu_us_per_delivery: per(run_cpu, stats.received),
            server_cpu_us_per_connect: per(connect_cpu, stats.connected),
            duration_secs: started.elapsed().as_secs_f64(),
        }
    }

    /// Prints the table.
    pub fn print(&self) {
        let opt = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.2}{unit}"));
        println!(
            "scenario            {} ({} worker(s), {:.1} s)",
            self.scenario, self.workers, self.duration_secs
        );
        println!(
            "connections         {} at {}",
            self.connections,
            opt(self.connect_rate, "/s")
        );
        if let Some(h) = &self.handshake_ms {
            println!(
                "handshake           p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                h.p50, h.p99, h.max
            );
        }
        println!(
            "server RSS          {} before, {} during; {} per connection",
            opt(self.server_rss_kib_before, " KiB"),
            opt(self.server_rss_kib_after, " KiB"),
            opt(self.rss_per_connection_kib, " KiB")
        );
        if let Some(l) = &self.latency_ms {
            println!(
                "latency             p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.3} ms",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        println!(
            "messages            sent {}, expected {}, received {} ({}), lost {}",
            self.sent,
            self.expected,
            self.received,
            opt(self.deliveries_per_sec, " deliveries/s"),
            self.lost
        );
        println!(
            "audit               gaps {}, duplicates {}, reorders {}",
            self.gaps, self.duplicates, self.reorders
        );
        println!(
            "server CPU          {} during the run; {} per delivery; {} per connect",
            opt(self.server_cpu_secs, " s"),
            opt(self.server_cpu_us_per_delivery, " µs"),
            opt(self.server_cpu_us_per_connect, " µs")
        );
        if self.errors.is_empty() {
            println!("errors              none");
        } else {
            for (cause, n) in &self.errors {
                println!("errors              {cause}: {n}");
            }
        }
    }

    /// Whether the run stayed within the thresholds.
    pub fn within(&self, max_p99_ms: Option<f64>, max_errors: Option<u64>) -> bool {
        let errors =
            self.errors.values().sum::<u64>() + self.gaps + self.duplicates + self.reorders;
        let p99_ok = match (max_p99_ms, &self.latency_ms) {
            (Some(max), Some(l)) => l.p99 <= max,
            _ => true,
        };
        let errors_ok = max_errors.is_none_or(|max| errors <= max);
        if !p99_ok {
            eprintln!("p99 latency above --max-p99-ms");
        }
        if !errors_ok {
            eprintln!("errors ({errors}) above --max-errors");
        }
        p99_ok && errors_ok
    }
}
