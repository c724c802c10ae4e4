//! What a run counts: latency and handshake histograms, counters, the offset audit and errors
//! by cause. Mergeable across tasks and worker processes.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Counts of one worker (or of the whole run, once merged).
#[derive(Debug, Clone)]
pub struct Stats {
    /// Publish-to-deliver latency, nanoseconds.
    pub latency: Histogram<u64>,
    /// Connect-to-welcome time, nanoseconds.
    pub handshake: Histogram<u64>,
    /// Connections that got `welcome`.
    pub connected: u64,
    /// Messages published (acked or not).
    pub sent: u64,
    /// Deliveries expected from what was sent (sent × recipients).
    pub expected: u64,
    /// Messages received.
    pub received: u64,
    /// Offsets skipped on some subscription.
    pub gaps: u64,
    /// Offsets received twice.
    pub duplicates: u64,
    /// Offsets received after a higher one.
    pub reorders: u64,
    /// Errors by cause: error codes, close codes, connect failures.
    pub errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            latency: Histogram::new(3).expect("3 significant figures is valid"),
            handshake: Histogram::new(3).expect("3 significant figures is valid"),
            connected: 0,
            sent: 0,
            expected: 0,
            received: 0,
            gaps: 0,
            duplicates: 0,
            reorders: 0,
            errors: BTreeMap::new(),
        }
    }
}

/// The offset audit of one subscription.
#[derive(Debug, Default, Clone, Copy)]
pub struct Audit {
    last: u64,
}

impl Audit {
    /// Starts after `offset` (the channel's latest at subscribe time).
    pub fn after(offset: u64) -> Self {
        Self { last: offset }
    }

    /// Records `offset` into `stats`.
    pub fn see(&mut self, offset: u64, stats: &mut Stats) {
        if offset == self.last {
            stats.duplicates += 1;
        } else if offset < self.last {
            stats.reorders += 1;
        } else {
            stats.gaps += offset - self.last - 1;
            self.last = offset;
        }
    }
}

impl Stats {
    /// Counts an error by cause.
    pub fn error(&mut self, cause: impl Into<String>) {
        *self.errors.entry(cause.into()).or_default() += 1;
    }

    /// Errors of every cause plus audit anomalies.
    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum::<u64>() + self.gaps + self.duplicates + self.reorders
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        let _ = self.latency.add(&other.latency);
        let _ = self.handshake.add(&other.handshake);
        self.connected += other.connected;
        self.sent += other.sent;
        self.expected += other.expected;
        self.received += other.received;
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        self.reorders += other.reorders;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    /// Moves everything out, leaving `self` empty.
    pub fn take(&mut self) -> Stats {
        std::mem::take(self)
    }
}

/// [`Stats`] in a form that crosses process boundaries (histograms as hex of V2 encoding).
#[derive(Debug, Serialize, Deserialize)]
pub struct WireStats {
    latency: String,
    handshake: String,
    connected: u64,
    sent: u64,
    expected: u64,
    received: u64,
    gaps: u64,
    duplicates: u64,
    reorders: u64,
    errors: BTreeMap<String, u64>,
}

fn to_hex(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    let _ = V2Serializer::new().serialize(h, &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()?;
    Ok(Deserializer::new().deserialize(&mut bytes.as_slice())?)
}

impl From<&Stats> for WireStats {
    fn from(s: &Stats) -> Self {
        WireStats {
            latency: to_hex(&s.latency),
            handshake: to_hex(&s.handshake),
            connected: s.connected,
            sent: s.sent,
            expected: s.expected,
            received: s.received,
            gaps: s.gaps,
            duplicates: s.duplicates,
            reorders: s.reorders,
            errors: s.errors.clone(),
        }
    }
}

impl TryFrom<WireStats> for Stats {
    type Error = anyhow::Error;
    fn try_from(w: WireStats) -> anyhow::Result<Self> {
        Ok(Stats {
            latency: from_hex(&w.latency)?,
            handshake: from_hex(&w.handshake)?,
            connected: w.connected,
            sent: w.sent,
            expected: w.expected,
            received: w.received,
            gaps: w.gaps,
            duplicates: w.duplicates,
            reorders: w.reorders,
            errors: w.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_counts_gaps_duplicates_and_reorders() {
        let mut s = Stats::default();
        let mut a = Audit::after(0);
        for o in [1, 2, 4, 4, 3, 5] {
            a.see(o, &mut s);
        }
        assert_eq!((s.gaps, s.duplicates, s.reorders), (1, 1, 1));
        let mut b = Audit::after(10);
        b.see(11, &mut s);
        assert_eq!(s.gaps, 1, "starting after the subscribe offset");
    }

    #[test]
    fn merge_survives_the_wire() {
        let mut a = Stats::default();
        a.latency.record(1_000_000).unwrap();
        a.received = 3;
        a.error("close_4002");
        let mut b = Stats::default();
        b.latency.record(3_000_000).unwrap();
        b.received = 4;
        b.error("close_4002");
        b.gaps = 2;
        let json = serde_json::to_string(&WireStats::from(&b)).unwrap();
        let back: Stats = serde_json::from_str::<WireStats>(&json)
            .unwrap()
            .try_into()
            .unwrap();
        a.merge(&back);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.latency.max(), b.latency.max());
        assert_eq!(a.received, 7);
        assert_eq!(a.errors["close_4002"], 2);
        assert_eq!(a.total_errors(), 4);
    }
}
