//! The life of one egress output as a sans-IO state machine fed `now`.
//!
//! `Starting` → `Recording` (the output took its first data: the muxer prerolled, the network
//! peer accepted) → `Stopping` → `Stopped`; `Recording` ⇄ `Stalled` while the sink takes no
//! data for longer than [`Supervisor::stall_after`] although frames wait; anything → `Failed`
//! on an error, and `Starting` → `Failed` when the output does not record within
//! [`Supervisor::start_timeout`]: a start is never left pending.

use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "why", rename_all = "lowercase")]
pub enum State {
    Starting,
    Recording,
    /// The sink has taken nothing for a while although frames wait; frames beyond the bound
    /// are dropped (counted) and become silence on the timeline if it recovers.
    Stalled,
    Stopping,
    Stopped,
    Failed(String),
}

impl State {
    pub fn is_final(&self) -> bool {
        matches!(self, State::Stopped | State::Failed(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Recording => "recording",
            State::Stalled => "stalled",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed(_) => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Supervisor {
    state: State,
    since: Instant,
    last_progress: Instant,
    pub start_timeout: Duration,
    pub stall_after: Duration,
    /// When the output started recording (for start latency).
    started_after: Option<Duration>,
}

pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(1);

impl Supervisor {
    pub fn new(now: Instant) -> Self {
        Self {
            state: State::Starting,
            since: now,
            last_progress: now,
            start_timeout: DEFAULT_START_TIMEOUT,
            stall_after: DEFAULT_STALL_AFTER,
            started_after: None,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Time from creation to `Recording`.
    pub fn start_latency(&self) -> Option<Duration> {
        self.started_after
    }

    fn set(&mut self, now: Instant, s: State) -> bool {
        if self.state == s || self.state.is_final() {
            return false;
        }
        self.state = s;
        self.since = now;
        true
    }

    /// The output took data (or reached its playing state). Returns whether the state changed.
    pub fn progress(&mut self, now: Instant) -> bool {
        self.last_progress = now;
        match self.state {
            State::Starting => {
                self.started_after = Some(now - self.since);
                self.set(now, State::Recording)
            }
            State::Stalled => self.set(now, State::Recording),
            _ => false,
        }
    }

    /// Periodic check: `waiting` = frames are queued for the sink.
    pub fn poll(&mut self, now: Instant, waiting: bool) -> bool {
        match self.state {
            State::Starting if now - self.since > self.start_timeout => {
                let why = format!(
                    "did not start recording within {} ms",
                    self.start_timeout.as_millis()
                );
                self.set(now, State::Failed(why))
            }
            State::Recording if waiting && now - self.last_progress > self.stall_after => {
                self.set(now, State::Stalled)
            }
            _ => false,
        }
    }

    pub fn stopping(&mut self, now: Instant) -> bool {
        self.set(now, State::Stopping)
    }

    pub fn stopped(&mut self, now: Instant) -> bool {
        self.set(now, State::Stopped)
    }

    pub fn failed(&mut self, now: Instant, why: impl Into<String>) -> bool {
        self.set(now, State::Failed(why.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_that_never_records_fails() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(t0);
        assert!(!s.poll(t0 + Duration::from_secs(4), false));
        assert_eq!(s.state(), &State::Starting);
        assert!(s.poll(t0 + Duration::from_secs(6), false));
        assert!(matches!(s.state(), State::Failed(w) if w.contains("5000 ms")));
        // Final: nothing moves it any more.
        assert!(!s.progress(t0 + Duration::from_secs(7)));
        assert!(!s.stopped(t0 + Duration::from_secs(7)));
    }

    #[test]
    fn stalls_only_while_frames_wait_and_recovers() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(t0);
        assert!(s.progress(t0 + Duration::from_millis(300)));
        assert_eq!(s.start_latency(), Some(Duration::from_millis(300)));
        // Nothing waiting: an idle sink is not stalled.
        assert!(!s.poll(t0 + Duration::from_secs(5), false));
        assert!(s.poll(t0 + Duration::from_secs(5), true));
        assert_eq!(s.state(), &State::Stalled);
        assert!(s.progress(t0 + Duration::from_secs(6)));
        assert_eq!(s.state(), &State::Recording);
        assert!(s.stopping(t0 + Duration::from_secs(7)));
        assert!(s.stopped(t0 + Duration::from_secs(7)));
        assert!(!s.failed(t0 + Duration::from_secs(8), "late"));
        assert_eq!(s.state(), &State::Stopped);
    }
}
