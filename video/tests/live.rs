//! The real-time driver (`aic_video::live`): paced streams through decode → encode with a
//! detector batched across them; frames without hints when the detector is late; draining.

use std::sync::Arc;
use std::time::Duration;

use aic_video::live::{self, Detect, LiveConfig, LiveReport, StreamReport};
use aic_video::roi::{FrameView, RoiBox, RoiError};
use aic_video::{EncoderKind, Yuv420Frame};

/// A moving diagonal gradient: something to encode that changes every frame.
fn clip(w: u32, h: u32, n: usize) -> Vec<Yuv420Frame> {
    (0..n)
        .map(|k| {
            let mut f = Yuv420Frame::grey(w, h).unwrap();
            for y in 0..h {
                for x in 0..w {
                    f.y[(y * w + x) as usize] = ((x + y) as usize * 3 + k * 5) as u8;
                }
            }
            f
        })
        .collect()
}

/// A detector that finds one face in the middle of every frame, after `delay`.
struct Fake {
    delay: Duration,
}

impl Detect for Fake {
    fn detect(&mut self, frames: &[FrameView<'_>]) -> Result<Vec<Vec<RoiBox>>, RoiError> {
        std::thread::sleep(self.delay);
        Ok(frames
            .iter()
            .map(|f| {
                let (w, h) = (f.width() as f32, f.height() as f32);
                vec![RoiBox {
                    x0: w * 0.25,
                    y0: h * 0.25,
                    x1: w * 0.75,
                    y1: h * 0.75,
                    score: 0.99,
                }]
            })
            .collect())
    }
}

fn run(delay: Duration, every: u64, deadline: Duration) -> (LiveConfig, LiveReport) {
    let frames = clip(64, 48, 12);
    let packets = Arc::new(live::publish_vp8(&frames, 30).unwrap());
    assert_eq!(packets.len(), 12);
    let mut cfg = LiveConfig::new(2, EncoderKind::Av1, 30, 100_000);
    cfg.duration = Duration::from_secs(1);
    cfg.detect_every = every;
    cfg.ai_deadline = deadline;
    // A shared, loaded test machine stalls now and then: no frame is dropped for that here.
    cfg.max_waiting = 30;
    cfg.drop_age = Duration::from_secs(5);
    let rep = live::run(&cfg, packets, Some(Box::new(Fake { delay }))).unwrap();
    (cfg, rep)
}

fn brief(s: &StreamReport) -> String {
    format!(
        "stream {}: in {} decoded {} encoded {} dropped {} forwarded {} errors {} hints \
         fresh/pending/late {}/{}/{} faces {} e2e p50 {} µs",
        s.stream,
        s.packets_in,
        s.frames_decoded,
        s.frames_encoded,
        s.frames_dropped,
        s.packets_forwarded,
        s.decode_errors,
        s.hints_fresh,
        s.hints_pending,
        s.hints_late,
        s.frames_with_faces,
        s.e2e_us.quantile(0.5)
    )
}

/// Every packet sent is accounted for (the workers drained), every stream's frames came out.
fn check_counts(rep: &LiveReport) {
    assert_eq!(rep.streams.len(), 2);
    assert_eq!(rep.packets_sent, 60, "1 s at 30 fps, 2 streams");
    for s in &rep.streams {
        assert_eq!(s.packets_in, 30, "{}", brief(s));
        assert_eq!(s.frames_decoded, 30, "{}", brief(s));
        assert_eq!(
            s.frames_encoded + s.frames_dropped,
            s.frames_decoded,
            "{}",
            brief(s)
        );
        assert_eq!(s.packets_forwarded, 0, "{}", brief(s));
        assert_eq!(s.decode_errors, 0, "{}", brief(s));
        assert_eq!(s.frames_encoded, 30, "{}", brief(s));
        assert_eq!(s.e2e_us.len(), s.frames_encoded);
        assert!(s.bytes_out > 0);
        assert_eq!(
            s.hints_fresh + s.hints_pending + s.hints_late,
            s.frames_encoded,
            "{}",
            brief(s)
        );
    }
}

#[test]
fn streams_come_out_with_hints_from_one_batched_detector() {
    let (cfg, rep) = run(Duration::ZERO, 3, Duration::from_secs(1));
    check_counts(&rep);
    let det = rep.detector.as_ref().unwrap();
    assert_eq!(det.errors, 0);
    // Every stream's due frames (every 3rd of 30) reached the detector, some in one batch.
    assert_eq!(det.frames + det.superseded, 2 * 30 / cfg.detect_every);
    assert!(det.runs <= det.frames);
    // Both streams' due frames went through one run (the detector waits up to a frame period
    // for the other stream's due frame).
    assert_eq!(det.batch.max(), 2, "{:?}", det.batch.distribution());
    for s in &rep.streams {
        assert_eq!(s.hints_late, 0, "{}", brief(s));
        assert!(s.hints_fresh >= 27, "{}", brief(s));
        assert_eq!(s.frames_with_faces, s.hints_fresh, "{}", brief(s));
    }
}

#[test]
fn a_late_detector_leaves_frames_without_hints_and_blocks_no_one() {
    // Detection every 6th frame (200 ms), each batch takes 60 ms, the deadline is 0: the due
    // frame and the next one (33 ms later) go without hints although the previous period's
    // boxes are still held; the rest of each period has the new boxes.
    let (_, rep) = run(Duration::from_millis(60), 6, Duration::ZERO);
    check_counts(&rep);
    for s in &rep.streams {
        assert!(s.hints_late >= 5, "{}", brief(s));
        assert!(s.hints_fresh >= 5, "{}", brief(s));
        // The encoders did not wait for the detector.
        assert!(
            s.e2e_us.quantile(0.5) < 100_000,
            "p50 {} µs",
            s.e2e_us.quantile(0.5)
        );
    }
}

#[test]
fn without_a_detector_nothing_is_hinted_and_a_pool_serves_several_streams() {
    let frames = clip(64, 48, 6);
    let packets = Arc::new(live::publish_vp8(&frames, 30).unwrap());
    let mut cfg = LiveConfig::new(3, EncoderKind::Av1, 30, 100_000);
    cfg.duration = Duration::from_millis(500);
    cfg.workers = 1;
    cfg.av1_speed = Some(10);
    let rep = live::run(&cfg, packets, None).unwrap();
    assert_eq!(rep.workers, 1);
    assert!(rep.detector.is_none());
    for s in &rep.streams {
        assert_eq!(s.packets_in, 15, "{}", brief(s));
        assert_eq!(s.frames_encoded + s.frames_dropped, 15, "{}", brief(s));
        assert_eq!(s.hints_fresh + s.hints_pending + s.hints_late, 0);
    }
}
