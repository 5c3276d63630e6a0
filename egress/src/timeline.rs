//! The egress timeline (sans-IO): frames are placed by their frame index, never by when they
//! arrived, so a file is exactly as long as the media it records.
//!
//! The first frame an egress sees is media time 0; frame `i` starts at `(i - first) × 20 ms`.
//! A frame that skips indices (loss upstream, frames the egress itself dropped while its sink
//! was stuck, a publisher that went away and came back) is preceded by silent frames for the
//! gap; a frame that goes backwards (duplicate, late) is dropped and counted. Nothing here
//! allocates per frame.

use std::time::Duration;

/// One frame is 20 ms.
pub const FRAME: Duration = Duration::from_millis(20);

/// What to do with a frame offered to [`Timeline::place`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Write `fill` silent frames first, then this frame.
    Write { fill: u64 },
    /// Behind the timeline (duplicate or late): drop it.
    Behind,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TimelineStats {
    /// Frames written (the offered ones that were placed).
    pub frames: u64,
    /// Silent frames written for gaps.
    pub filled: u64,
    /// Frames dropped because they went backwards.
    pub behind: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Timeline {
    first: Option<u64>,
    next: u64,
    pub stats: TimelineStats,
}

impl Timeline {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places frame `index`; the caller writes what the answer says.
    pub fn place(&mut self, index: u64) -> Placement {
        let Some(_) = self.first else {
            self.first = Some(index);
            self.next = index + 1;
            self.stats.frames += 1;
            return Placement::Write { fill: 0 };
        };
        if index < self.next {
            self.stats.behind += 1;
            return Placement::Behind;
        }
        let fill = index - self.next;
        self.next = index + 1;
        self.stats.frames += 1;
        self.stats.filled += fill;
        Placement::Write { fill }
    }

    /// The index the first frame had (media time 0).
    pub fn first(&self) -> Option<u64> {
        self.first
    }

    /// Frames on the timeline so far (written + filled).
    pub fn len(&self) -> u64 {
        self.stats.frames + self.stats.filled
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Media time recorded so far.
    pub fn media_time(&self) -> Duration {
        FRAME * self.len() as u32
    }

    /// Presentation time of timeline position `pos` (0-based), in nanoseconds.
    pub fn pts_ns(pos: u64) -> u64 {
        pos * FRAME.as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_filled_and_duplicates_dropped() {
        let mut t = Timeline::new();
        assert_eq!(t.place(100), Placement::Write { fill: 0 });
        assert_eq!(t.place(101), Placement::Write { fill: 0 });
        assert_eq!(t.place(101), Placement::Behind);
        assert_eq!(t.place(50), Placement::Behind);
        assert_eq!(t.place(105), Placement::Write { fill: 3 });
        assert_eq!(t.len(), 6);
        assert_eq!(t.media_time(), Duration::from_millis(120));
        assert_eq!(
            t.stats,
            TimelineStats {
                frames: 3,
                filled: 3,
                behind: 2
            }
        );
        assert_eq!(t.first(), Some(100));
        assert_eq!(Timeline::pts_ns(3), 60_000_000);
    }

    #[test]
    fn media_time_is_the_index_span_whatever_the_order_of_arrival() {
        // However frames are offered (some missing, some repeated), the timeline ends exactly
        // at (last index − first index + 1) frames.
        let mut t = Timeline::new();
        let order = [7u64, 8, 8, 9, 12, 11, 13, 40, 41];
        for i in order {
            t.place(i);
        }
        assert_eq!(t.len(), 41 - 7 + 1);
    }
}
