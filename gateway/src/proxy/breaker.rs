//! A circuit breaker per backend endpoint: after `failures` failed calls in a row it opens,
//! and calls fail at once (no socket, no wait) for `open_for`; then one call at a time is let
//! through as a probe (half-open), and the first that succeeds closes it again. A backend that
//! is down costs the gateway nothing but a counter, and a client an immediate, clear error.
//!
//! Written here rather than taken from a crate: the few breaker crates either wrap a whole
//! `tower` service stack or count failures in time windows, and the rule here is ten lines.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state as the metrics and the admin page show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through.
    Closed,
    /// Calls fail at once.
    Open,
    /// One probe call at a time goes through.
    HalfOpen,
}

impl State {
    /// The value of the `gateway_proxy_breaker_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open => 1.0,
            State::HalfOpen => 2.0,
        }
    }

    /// The name the admin page shows.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum Phase {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out since `since`; another is let through if it never reports (its caller
    /// was cancelled) within `open_for`.
    HalfOpen {
        since: Instant,
    },
}

/// Whether a call may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go (closed).
    Go,
    /// Go, as the half-open probe.
    Probe,
    /// Fail at once (open, or a probe is out).
    Refused,
}

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Breaker {
    phase: Mutex<Phase>,
    failures: u32,
    open_for: Duration,
}

impl Breaker {
    /// Opens after `failures` failures in a row (at least 1), for `open_for`.
    pub fn new(failures: u32, open_for: Duration) -> Self {
        Self {
            phase: Mutex::new(Phase::Closed { failures: 0 }),
            failures: failures.max(1),
            open_for,
        }
    }

    /// Whether a call may go now.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut phase = self.phase.lock();
        match *phase {
            Phase::Closed { .. } => Admission::Go,
            Phase::Open { until } | Phase::HalfOpen { since: until } if now < until => {
                Admission::Refused
            }
            Phase::Open { .. } | Phase::HalfOpen { .. } => {
                *phase = Phase::HalfOpen {
                    since: now + self.open_for,
                };
                Admission::Probe
            }
        }
    }

    /// Records how an admitted call ended. Returns the new state when it changed.
    pub fn record(&self, admission: Admission, ok: bool, now: Instant) -> Option<State> {
        let mut phase = self.phase.lock();
        let before = state_of(&phase);
        match (&mut *phase, ok) {
            (_, true) if admission == Admission::Probe => *phase = Phase::Closed { failures: 0 },
            (Phase::Closed { failures }, true) => *failures = 0,
            (Phase::Closed { failures }, false) => {
                *failures += 1;
                if *failures >= self.failures {
                    *phase = Phase::Open {
                        until: now + self.open_for,
                    };
                }
            }
            (_, false) if admission == Admission::Probe => {
                *phase = Phase::Open {
                    until: now + self.open_for,
                }
            }
            // A call admitted while closed that ends after the breaker opened tells nothing
            // new.
            _ => {}
        }
        let after = state_of(&phase);
        (after != before).then_some(after)
    }

    /// The state now.
    pub fn state(&self) -> State {
        state_of(&self.phase.lock())
    }
}

fn state_of(phase: &Phase) -> State {
    match phase {
        Phase::Closed { .. } => State::Closed,
        Phase::Open { .. } => State::Open,
        Phase::HalfOpen { .. } => State::HalfOpen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_closes_after_a_good_probe() {
        let b = Breaker::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        // Two failures, a success: the count starts again.
        for ok in [false, false, true, false, false] {
            assert_eq!(b.admit(t0), Admission::Go);
            assert_eq!(b.record(Admission::Go, ok, t0), None);
        }
        assert_eq!(b.admit(t0), Admission::Go);
        assert_eq!(b.record(Admission::Go, false, t0), Some(State::Open));
        assert_eq!(b.admit(t0 + Duration::from_secs(4)), Admission::Refused);
        // Open time over: one probe, and nobody else while it is out.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.admit(t1), Admission::Probe);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.admit(t1), Admission::Refused);
        // The probe fails: open again for the whole time.
        assert_eq!(b.record(Admission::Probe, false, t1), Some(State::Open));
        assert_eq!(b.admit(t1 + Duration::from_secs(4)), Admission::Refused);
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(b.admit(t2), Admission::Probe);
        assert_eq!(b.record(Admission::Probe, true, t2), Some(State::Closed));
        assert_eq!(b.admit(t2), Admission::Go);
    }

    #[test]
    fn a_probe_that_never_reports_lets_another_through_later() {
        let b = Breaker::new(1, Duration::from_secs(2));
        let t0 = Instant::now();
        assert_eq!(b.record(Admission::Go, false, t0), Some(State::Open));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.admit(t1), Admission::Probe);
        assert_eq!(b.admit(t1 + Duration::from_secs(1)), Admission::Refused);
        assert_eq!(b.admit(t1 + Duration::from_secs(2)), Admission::Probe);
    }

    #[test]
    fn late_results_of_calls_admitted_while_closed_change_nothing_once_open() {
        let b = Breaker::new(1, Duration::from_secs(2));
        let t0 = Instant::now();
        assert_eq!(b.record(Admission::Go, false, t0), Some(State::Open));
        assert_eq!(b.record(Admission::Go, true, t0), None);
        assert_eq!(b.state(), State::Open);
    }
}
