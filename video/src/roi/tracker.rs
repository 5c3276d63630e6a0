//! When to run the detector, and which boxes hold in between (sans-IO: fed frame indices).

use std::collections::HashMap;
use std::hash::Hash;

use super::RoiBox;
use super::nms::{Overlap, iou};

/// The tracker's cadence and memory, in frames.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackerConfig {
    /// The detector runs on a stream's first frame and then every `every` frames (≥ 1).
    pub every: u64,
    /// A box not seen again keeps full weight for `every` frames after it was last seen, then
    /// fades linearly and is gone `hold` frames after it (`hold ≥ every`): one missed detection
    /// (a turned head, motion blur) does not drop a face's quality at once.
    pub hold: u64,
    /// A new box continues an old one when their IoU exceeds this.
    pub match_iou: f32,
    /// Weight of the old position when a box is matched (0 = jump to the new detection).
    pub smoothing: f32,
}

impl Default for TrackerConfig {
    /// Every 5th frame (6 detections a second at 30 fps), kept 15 frames (half a second).
    fn default() -> Self {
        TrackerConfig {
            every: 5,
            hold: 15,
            match_iou: 0.3,
            smoothing: 0.3,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Track {
    b: RoiBox,
    last_seen: u64,
}

#[derive(Clone, Debug, Default)]
struct StreamState {
    last_detect: Option<u64>,
    tracks: Vec<Track>,
}

/// Per-stream detection cadence and box memory. The driver asks [`RoiTracker::due`] for each
/// stream's frame, batches the frames that are due into one [`super::Detector::detect`], hands
/// each stream's result to [`RoiTracker::update`], and takes [`RoiTracker::boxes`] for every
/// frame, due or not.
#[derive(Clone, Debug)]
pub struct RoiTracker<K = u64> {
    cfg: TrackerConfig,
    streams: HashMap<K, StreamState>,
}

impl<K: Hash + Eq + Copy> RoiTracker<K> {
    pub fn new(cfg: TrackerConfig) -> Self {
        let cfg = TrackerConfig {
            every: cfg.every.max(1),
            hold: cfg.hold.max(cfg.every.max(1)),
            match_iou: cfg.match_iou.clamp(0.0, 1.0),
            smoothing: cfg.smoothing.clamp(0.0, 1.0),
        };
        RoiTracker {
            cfg,
            streams: HashMap::new(),
        }
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    /// Whether the detector should see this stream's `frame`: its first frame, every
    /// `every`-th after the last detection, or after the index went backwards (a restart).
    pub fn due(&self, stream: K, frame: u64) -> bool {
        match self.streams.get(&stream).and_then(|s| s.last_detect) {
            None => true,
            Some(last) => frame < last || frame - last >= self.cfg.every,
        }
    }

    /// Takes the detector's boxes for `stream`'s `frame`: each continues the best-overlapping
    /// old box (its position smoothed) or starts a new one; old boxes not found stay until
    /// `hold` frames after they were last seen.
    pub fn update(&mut self, stream: K, frame: u64, detected: &[RoiBox]) {
        let cfg = self.cfg;
        let s = self.streams.entry(stream).or_default();
        if s.last_detect.is_some_and(|last| frame < last) {
            s.tracks.clear();
        }
        s.last_detect = Some(frame);
        let mut taken = vec![false; s.tracks.len()];
        let mut fresh = Vec::new();
        for d in detected.iter().filter(|d| d.area() > 0.0) {
            let best = s
                .tracks
                .iter()
                .enumerate()
                .filter(|(i, _)| !taken[*i])
                .map(|(i, t)| (i, iou(&t.b, d, Overlap::Union)))
                .filter(|&(_, o)| o > cfg.match_iou)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match best {
                Some((i, _)) => {
                    taken[i] = true;
                    let old = s.tracks[i].b;
                    let a = cfg.smoothing;
                    let mix = |o: f32, n: f32| a * o + (1.0 - a) * n;
                    s.tracks[i] = Track {
                        b: RoiBox {
                            x0: mix(old.x0, d.x0),
                            y0: mix(old.y0, d.y0),
                            x1: mix(old.x1, d.x1),
                            y1: mix(old.y1, d.y1),
                            score: d.score,
                        },
                        last_seen: frame,
                    };
                }
                None => fresh.push(Track {
                    b: *d,
                    last_seen: frame,
                }),
            }
        }
        s.tracks.extend(fresh);
        s.tracks.retain(|t| frame - t.last_seen < cfg.hold);
    }

    /// The boxes to use for `stream`'s `frame`, their scores scaled by how long ago they were
    /// last seen (1 up to `every` frames, then falling linearly to 0 at `hold`).
    pub fn boxes(&self, stream: K, frame: u64) -> Vec<RoiBox> {
        let Some(s) = self.streams.get(&stream) else {
            return Vec::new();
        };
        s.tracks
            .iter()
            .filter_map(|t| {
                let age = frame.checked_sub(t.last_seen)?;
                let w = if age <= self.cfg.every {
                    1.0
                } else if age >= self.cfg.hold {
                    0.0
                } else {
                    1.0 - (age - self.cfg.every) as f32 / (self.cfg.hold - self.cfg.every) as f32
                };
                (w > 0.0).then_some(RoiBox {
                    score: t.b.score * w,
                    ..t.b
                })
            })
            .collect()
    }

    /// Forgets a stream.
    pub fn remove(&mut self, stream: K) {
        self.streams.remove(&stream);
    }

    /// Streams currently known.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32) -> RoiBox {
        RoiBox {
            x0: x,
            y0: 10.0,
            x1: x + 40.0,
            y1: 60.0,
            score: 1.0,
        }
    }

    #[test]
    fn due_on_the_first_frame_then_every_n_and_after_a_restart() {
        let mut t: RoiTracker = RoiTracker::new(TrackerConfig {
            every: 3,
            hold: 6,
            ..TrackerConfig::default()
        });
        let mut ran = Vec::new();
        for f in 10..20u64 {
            if t.due(7, f) {
                t.update(7, f, &[face(0.0)]);
                ran.push(f);
            }
        }
        assert_eq!(ran, vec![10, 13, 16, 19]);
        // The index went backwards (the stream restarted): due at once, old boxes forgotten.
        assert!(t.due(7, 2));
        t.update(7, 2, &[]);
        assert!(t.boxes(7, 2).is_empty());
        // Another stream has its own cadence.
        assert!(t.due(8, 19));
        t.remove(7);
        assert!(t.is_empty());
    }

    #[test]
    fn a_moving_face_is_one_track_smoothed_towards_the_new_position() {
        let mut t: RoiTracker = RoiTracker::new(TrackerConfig {
            smoothing: 0.5,
            ..TrackerConfig::default()
        });
        t.update(1, 0, &[face(0.0)]);
        t.update(1, 5, &[face(8.0)]);
        let b = t.boxes(1, 5);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].x0, b[0].x1), (4.0, 44.0));
        // A second face far away starts a second track.
        t.update(1, 10, &[face(8.0), face(200.0)]);
        assert_eq!(t.boxes(1, 10).len(), 2);
    }

    #[test]
    fn an_unseen_face_holds_then_fades_then_goes() {
        let mut t: RoiTracker = RoiTracker::new(TrackerConfig {
            every: 2,
            hold: 6,
            ..TrackerConfig::default()
        });
        t.update(1, 0, &[face(0.0)]);
        let score = |t: &RoiTracker, f| t.boxes(1, f).first().map_or(0.0, |b| b.score);
        assert_eq!(score(&t, 2), 1.0);
        t.update(1, 2, &[]);
        assert_eq!(score(&t, 2), 1.0);
        assert!((score(&t, 4) - 0.5).abs() < 1e-6);
        t.update(1, 4, &[]);
        assert!(score(&t, 5) > 0.0 && score(&t, 5) < 0.5);
        t.update(1, 6, &[]);
        assert!(t.boxes(1, 6).is_empty());
    }
}
