//! The scenarios and what they print.

use crate::client::{self, Socket};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// Resident set size of `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Opens `n` connections at `rate`/s, holds them `hold` seconds, reports.
pub async fn idle(
    url: &str,
    secret: &str,
    n: usize,
    rate: u32,
    hold: u64,
    pid: Option<u32>,
) -> anyhow::Result<()> {
    let rss_before = pid.and_then(rss_kib);
    let handshakes = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tasks = Vec::with_capacity(n);
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    for i in 0..n {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let (url, secret) = (url.to_owned(), secret.to_owned());
        let (handshakes, failures) = (handshakes.clone(), failures.clone());
        let mut stop = stop_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            match client::connect(&url, &secret, &format!("idle{i}")).await {
                Ok(mut ws) => {
                    let _ = handshakes
                        .lock()
                        .await
                        .record(t0.elapsed().as_nanos() as u64);
                    // Hold: keep reading so pings are answered.
                    loop {
                        tokio::select! {
                            _ = stop.recv() => break,
                            frame = ws.next() => if !matches!(frame, Some(Ok(_))) {
                                failures.fetch_add(1, Ordering::Relaxed);
                                break;
                            },
                        }
                    }
                    let _ = ws.close(None).await;
                }
                Err(e) => {
                    if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("connect failed: {e:#}");
                    }
                }
            }
        }));
    }
    // Wait until every handshake finished or failed.
    while handshakes.lock().await.len() + failures.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let rss_after = pid.and_then(rss_kib);
    let h = handshakes.lock().await.clone();
    let ok = h.len();
    println!(
        "connections opened: {ok} of {n}, failures: {}",
        failures.load(Ordering::Relaxed)
    );
    println!(
        "connect rate: {:.0}/s over {:.2} s",
        ok as f64 / open_time.as_secs_f64(),
        open_time.as_secs_f64()
    );
    println!(
        "handshake latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        micros(&h, 0.5) / 1000.0,
        micros(&h, 0.99) / 1000.0,
        h.max() as f64 / 1e6
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        println!(
            "server RSS: {before} KiB before, {after} KiB holding; {:.2} KiB per connection",
            (after.saturating_sub(before)) as f64 / ok.max(1) as f64
        );
    }
    let _ = stop_tx.send(());
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Offsets seen by one subscriber: gaps, duplicates and reorders.
#[derive(Debug, Default, Clone, Copy)]
pub struct Audit {
    last: u64,
    /// Messages received.
    pub received: u64,
    /// Offsets skipped.
    pub gaps: u64,
    /// Offsets seen twice or going backwards.
    pub duplicates_or_reorders: u64,
}

impl Audit {
    /// Records one offset.
    pub fn see(&mut self, offset: u64) {
        self.received += 1;
        if offset <= self.last {
            self.duplicates_or_reorders += 1;
            return;
        }
        if self.last != 0 && offset > self.last + 1 {
            self.gaps += offset - self.last - 1;
        }
        self.last = offset;
    }
}

/// Subscribers on `channel`, one publisher at `rate`/s for `duration` s.
pub async fn latency(
    url: &str,
    secret: &str,
    subscribers: usize,
    rate: u32,
    duration: u64,
    channel: &str,
) -> anyhow::Result<()> {
    let mut subs: Vec<Socket> = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let mut ws = client::connect(url, secret, &format!("sub{i}")).await?;
        client::request(
            &mut ws,
            json!({"id": 1, "op": "subscribe", "channel": channel}),
        )
        .await?;
        subs.push(ws);
    }
    let total = u64::from(rate) * duration;
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let audits = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    for mut ws in subs {
        let (histogram, audits) = (histogram.clone(), audits.clone());
        readers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            let mut audit = Audit::default();
            while audit.received < total {
                let Ok(Ok(frame)) =
                    tokio::time::timeout(Duration::from_secs(10), client::next_json(&mut ws)).await
                else {
                    break;
                };
                if frame["op"] != "message" {
                    continue;
                }
                let sent = frame["data"]["t"].as_u64().unwrap_or(0);
                let _ = local.record(now_nanos().saturating_sub(sent));
                audit.see(frame["offset"].as_u64().unwrap_or(0));
            }
            let _ = histogram.lock().await.add(&local);
            audits.lock().await.push(audit);
        }));
    }
    let mut publisher = client::connect(url, secret, "publisher").await?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut errors = 0u64;
    for i in 0..total {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let cmd =
            json!({"id": i + 1, "op": "publish", "channel": channel, "data": {"t": now_nanos()}});
        if client::send(&mut publisher, &cmd).await.is_err() {
            errors += 1;
        }
        // Drain acks without waiting for them.
        while let Some(Some(Ok(_))) = futures_util::FutureExt::now_or_never(publisher.next()) {}
    }
    for r in readers {
        let _ = r.await;
    }
    let h = histogram.lock().await.clone();
    let audits = audits.lock().await.clone();
    let received: u64 = audits.iter().map(|a| a.received).sum();
    let gaps: u64 = audits.iter().map(|a| a.gaps).sum();
    let dups: u64 = audits.iter().map(|a| a.duplicates_or_reorders).sum();
    let elapsed = started.elapsed().as_secs_f64();
    println!("published {total} at {rate}/s to {subscribers} subscribers; send errors {errors}");
    println!(
        "delivered {received} of {} ({:.0} deliveries/s); gaps {gaps}, duplicates/reorders {dups}",
        total * subscribers as u64,
        received as f64 / elapsed
    );
    println!(
        "publish-to-deliver latency: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.3} ms",
        micros(&h, 0.5) / 1000.0,
        micros(&h, 0.9) / 1000.0,
        micros(&h, 0.99) / 1000.0,
        micros(&h, 0.999) / 1000.0,
        h.max() as f64 / 1e6
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Audit;

    #[test]
    fn audit_counts_gaps_and_duplicates() {
        let mut a = Audit::default();
        for o in [1, 2, 4, 4, 3, 5] {
            a.see(o);
        }
        assert_eq!(a.received, 6);
        assert_eq!(a.gaps, 1);
        assert_eq!(a.duplicates_or_reorders, 2);
    }
}
