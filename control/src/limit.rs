//! Per-client-address limit on failed authentications, fed `now` (no clock, no I/O).
//!
//! Why: an API key is 256 random bits, so guessing is hopeless, but every failed attempt still
//! costs a store lookup (the cache only holds keys that exist) and a log line. A client that
//! fails `max` times within one window is refused outright until the window is over; the first
//! refusal of a window is reported (`Verdict::Blocked { first: true }`) so the caller logs once
//! per window, not once per attempt.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on and check the key.
    Allow,
    /// Refuse without checking; `retry_in` is what is left of the window; `first` is true for
    /// the first refusal of this window (log it).
    Blocked { retry_in: Duration, first: bool },
}

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    reported: bool,
}

#[derive(Debug)]
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    capacity: usize,
    by_peer: HashMap<IpAddr, Entry>,
}

impl FailureLimiter {
    /// `max` failures per `window` per address; at most `capacity` addresses are tracked (the
    /// table is pruned of expired windows, then of the oldest, when full).
    pub fn new(max: u32, window: Duration, capacity: usize) -> Self {
        Self {
            max: max.max(1),
            window,
            capacity: capacity.max(1),
            by_peer: HashMap::new(),
        }
    }

    /// Before checking a key from `peer`.
    pub fn check(&mut self, peer: IpAddr, now: Instant) -> Verdict {
        let Some(e) = self.by_peer.get_mut(&peer) else {
            return Verdict::Allow;
        };
        let elapsed = now.saturating_duration_since(e.window_start);
        if elapsed >= self.window {
            self.by_peer.remove(&peer);
            return Verdict::Allow;
        }
        if e.failures < self.max {
            return Verdict::Allow;
        }
        let first = !e.reported;
        e.reported = true;
        Verdict::Blocked {
            retry_in: self.window - elapsed,
            first,
        }
    }

    /// After a key from `peer` failed to authenticate.
    pub fn failed(&mut self, peer: IpAddr, now: Instant) {
        if !self.by_peer.contains_key(&peer) && self.by_peer.len() >= self.capacity {
            let window = self.window;
            self.by_peer
                .retain(|_, e| now.saturating_duration_since(e.window_start) < window);
            if self.by_peer.len() >= self.capacity
                && let Some(oldest) = self
                    .by_peer
                    .iter()
                    .min_by_key(|(_, e)| e.window_start)
                    .map(|(k, _)| *k)
            {
                self.by_peer.remove(&oldest);
            }
        }
        let e = self.by_peer.entry(peer).or_insert(Entry {
            window_start: now,
            failures: 0,
            reported: false,
        });
        if now.saturating_duration_since(e.window_start) >= self.window {
            *e = Entry {
                window_start: now,
                failures: 0,
                reported: false,
            };
        }
        e.failures = e.failures.saturating_add(1);
    }

    pub fn tracked(&self) -> usize {
        self.by_peer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn blocks_after_max_failures_until_the_window_ends() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(3, Duration::from_secs(60), 100);
        for i in 0..3 {
            assert_eq!(l.check(ip(1), t0), Verdict::Allow, "attempt {i}");
            l.failed(ip(1), t0);
        }
        let v = l.check(ip(1), t0 + Duration::from_secs(10));
        assert_eq!(
            v,
            Verdict::Blocked {
                retry_in: Duration::from_secs(50),
                first: true
            }
        );
        // Reported once per window.
        assert!(matches!(
            l.check(ip(1), t0 + Duration::from_secs(11)),
            Verdict::Blocked { first: false, .. }
        ));
        // Another address is not affected.
        assert_eq!(l.check(ip(2), t0), Verdict::Allow);
        // The window is over: allowed again, with a fresh count.
        assert_eq!(l.check(ip(1), t0 + Duration::from_secs(60)), Verdict::Allow);
        l.failed(ip(1), t0 + Duration::from_secs(61));
        assert_eq!(l.check(ip(1), t0 + Duration::from_secs(61)), Verdict::Allow);
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(1, Duration::from_secs(60), 4);
        for n in 0..50u8 {
            l.failed(ip(n), t0 + Duration::from_millis(u64::from(n)));
            assert!(l.tracked() <= 4);
        }
        // The newest are kept.
        assert!(matches!(l.check(ip(49), t0), Verdict::Blocked { .. }));
    }
}
