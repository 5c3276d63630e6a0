//! Usage metering. A session counts into its own atomics (a few relaxed adds per frame, never a
//! store write); a flush takes what every live and ended session counted since the last flush
//! and the store adds it to the key's row for the hour. Nothing is counted twice or lost: a
//! session's counters are swapped to zero when taken, and a failed write is put back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One key's usage over some span.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub sessions: u64,
    pub media_ms_encoded: u64,
    pub media_ms_decoded: u64,
    /// Media written out by egress (recordings, re-streams) for the key.
    pub media_ms_egress: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub bytes_saved: u64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.sessions += o.sessions;
        self.media_ms_encoded += o.media_ms_encoded;
        self.media_ms_decoded += o.media_ms_decoded;
        self.media_ms_egress += o.media_ms_egress;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.bytes_saved += o.bytes_saved;
    }

    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

/// Who the usage belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Account {
    pub key_id: String,
    pub tenant_id: String,
}

/// One session's counters.
#[derive(Debug, Default)]
pub struct SessionCounters {
    media_ms_encoded: AtomicU64,
    media_ms_decoded: AtomicU64,
    media_ms_egress: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    bytes_saved: AtomicU64,
    /// Anything counted, ever (survives takes): whether the session is billed as one.
    used: AtomicBool,
}

impl SessionCounters {
    pub fn encoded_ms(&self, ms: u64) {
        self.used.store(true, Ordering::Relaxed);
        self.media_ms_encoded.fetch_add(ms, Ordering::Relaxed);
    }
    pub fn decoded_ms(&self, ms: u64) {
        self.used.store(true, Ordering::Relaxed);
        self.media_ms_decoded.fetch_add(ms, Ordering::Relaxed);
    }
    pub fn egress_ms(&self, ms: u64) {
        self.used.store(true, Ordering::Relaxed);
        self.media_ms_egress.fetch_add(ms, Ordering::Relaxed);
    }
    pub fn bytes_in(&self, n: u64) {
        self.used.store(true, Ordering::Relaxed);
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }
    pub fn bytes_out(&self, n: u64) {
        self.used.store(true, Ordering::Relaxed);
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }
    pub fn bytes_saved(&self, n: u64) {
        self.used.store(true, Ordering::Relaxed);
        self.bytes_saved.fetch_add(n, Ordering::Relaxed);
    }

    fn take(&self) -> Usage {
        Usage {
            sessions: 0,
            media_ms_encoded: self.media_ms_encoded.swap(0, Ordering::Relaxed),
            media_ms_decoded: self.media_ms_decoded.swap(0, Ordering::Relaxed),
            media_ms_egress: self.media_ms_egress.swap(0, Ordering::Relaxed),
            bytes_in: self.bytes_in.swap(0, Ordering::Relaxed),
            bytes_out: self.bytes_out.swap(0, Ordering::Relaxed),
            bytes_saved: self.bytes_saved.swap(0, Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    live: HashMap<u64, (Account, Arc<SessionCounters>)>,
    pending: HashMap<Account, Usage>,
}

/// All sessions' metering; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    inner: Arc<Mutex<Inner>>,
}

/// A live session's metering; dropping it ends the session (its counts become pending).
#[derive(Debug)]
pub struct SessionMeter {
    id: u64,
    meter: Meter,
    pub counters: Arc<SessionCounters>,
}

impl Drop for SessionMeter {
    fn drop(&mut self) {
        let mut g = self.meter.lock();
        if let Some((acct, c)) = g.live.remove(&self.id) {
            let mut u = c.take();
            // A session counts when it carried something: a call refused after admission
            // (pipeline full, bad first frame) is not billed as a session.
            if c.used.load(Ordering::Relaxed) {
                u.sessions = 1;
                g.pending.entry(acct).or_default().add(&u);
            }
        }
    }
}

impl Meter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Counters stay consistent even if a holder panicked: recover rather than lose usage.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn start(&self, acct: Account) -> SessionMeter {
        let counters = Arc::new(SessionCounters::default());
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        g.live.insert(id, (acct, counters.clone()));
        SessionMeter {
            id,
            meter: self.clone(),
            counters,
        }
    }

    /// Everything counted since the last take: ended sessions and live ones' progress.
    pub fn take(&self) -> Vec<(Account, Usage)> {
        // Note: a live session's progress is taken without its session count; the count comes
        // with its final take, so a session spanning flushes is counted once.
        let mut g = self.lock();
        let mut out = std::mem::take(&mut g.pending);
        for (acct, c) in g.live.values() {
            let u = c.take();
            if !u.is_zero() {
                out.entry(acct.clone()).or_default().add(&u);
            }
        }
        out.into_iter().filter(|(_, u)| !u.is_zero()).collect()
    }

    /// Puts back what a failed flush took, to be written next time.
    pub fn restore(&self, taken: Vec<(Account, Usage)>) {
        let mut g = self.lock();
        for (a, u) in taken {
            g.pending.entry(a).or_default().add(&u);
        }
    }

    pub fn live_sessions(&self) -> usize {
        self.lock().live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(k: &str) -> Account {
        Account {
            key_id: k.into(),
            tenant_id: "t".into(),
        }
    }

    #[test]
    fn live_progress_and_ended_sessions_are_taken_once() {
        let m = Meter::default();
        let s1 = m.start(acct("a"));
        let s2 = m.start(acct("a"));
        drop(m.start(acct("a"))); // carried nothing: not a session
        s1.counters.encoded_ms(20);
        s1.counters.bytes_in(640);
        s2.counters.decoded_ms(40);
        s2.counters.egress_ms(60);
        let t = m.take();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].1.media_ms_encoded, 20);
        assert_eq!(t[0].1.media_ms_decoded, 40);
        assert_eq!(t[0].1.media_ms_egress, 60);
        assert_eq!(t[0].1.sessions, 0);
        assert!(m.take().is_empty(), "nothing new since");
        s1.counters.encoded_ms(20);
        s2.counters.egress_ms(40);
        drop(s1);
        drop(s2);
        let t = m.take();
        assert_eq!(t[0].1.sessions, 2);
        assert_eq!(t[0].1.media_ms_encoded, 20);
        assert_eq!(
            t[0].1.media_ms_egress, 40,
            "only what came since the last take"
        );
        assert_eq!(m.live_sessions(), 0);
    }

    #[test]
    fn egress_alone_makes_a_session_and_adds_up() {
        let m = Meter::default();
        // A recording-only session (egress, no codec work) is billed as a session.
        let s = m.start(acct("e"));
        s.counters.egress_ms(1_000);
        s.counters.egress_ms(500);
        drop(s);
        let t = m.take();
        assert_eq!(t.len(), 1);
        assert_eq!(
            t[0].1,
            Usage {
                sessions: 1,
                media_ms_egress: 1_500,
                ..Usage::default()
            }
        );
        let mut sum = t[0].1.clone();
        sum.add(&t[0].1);
        assert_eq!(sum.media_ms_egress, 3_000);
        assert_eq!(sum.sessions, 2);
    }

    #[test]
    fn a_failed_flush_is_restored() {
        let m = Meter::default();
        let s = m.start(acct("b"));
        s.counters.bytes_saved(100);
        s.counters.egress_ms(20);
        drop(s);
        let t = m.take();
        m.restore(t.clone());
        assert_eq!(m.take(), t);
        assert_eq!(t[0].1.media_ms_egress, 20);
    }
}
