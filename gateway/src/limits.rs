//! Rate limiting primitives for one connection.

use std::time::{Duration, Instant};

/// A token bucket. Its rate and size are node-wide settings passed to each call, so that a
/// connection holds only the bucket's level and clock (every idle byte counts).
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f32,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens.
    pub fn new(burst: u32, now: Instant) -> Self {
        Self {
            tokens: burst as f32,
            last: now,
        }
    }

    /// Refills at `rate` per second up to `burst`, then takes one token if there is one.
    pub fn try_take(&mut self, now: Instant, rate: u32, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts events in fixed one-minute windows.
#[derive(Debug)]
pub struct MinuteCounter {
    window_start: Instant,
    count: u32,
}

impl MinuteCounter {
    /// An empty counter.
    pub fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            count: 0,
        }
    }

    /// Records one event; returns the count in the current window.
    pub fn record(&mut self, now: Instant) -> u32 {
        if now.saturating_duration_since(self.window_start) >= Duration::from_secs(60) {
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, t0);
        let take = |b: &mut TokenBucket, t| b.try_take(t, 10, 3);
        assert!(take(&mut b, t0) && take(&mut b, t0) && take(&mut b, t0));
        assert!(!take(&mut b, t0));
        assert!(take(&mut b, t0 + Duration::from_millis(101)));
        assert!(!take(&mut b, t0 + Duration::from_millis(101)));
    }

    #[test]
    fn minute_counter_resets() {
        let t0 = Instant::now();
        let mut c = MinuteCounter::new(t0);
        assert_eq!(c.record(t0), 1);
        assert_eq!(c.record(t0 + Duration::from_secs(59)), 2);
        assert_eq!(c.record(t0 + Duration::from_secs(61)), 1);
    }
}
