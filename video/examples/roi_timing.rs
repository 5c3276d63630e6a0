//! Face-detector time per frame at batch 1, 4 and 16 (issue #14's "detector batched").
//!
//!     ORT_DYLIB_PATH=... cargo run --release -p aic-video --example roi_timing [-- ROUNDS]
//!
//! Frames: the two `carphone` fixture frames (176×144, one face each), and the same pictures
//! enlarged to 1280×720 (the canvas fill then reads 20× more pixels). One ONNX Runtime thread
//! per graph, as a serving thread runs it. For the default configuration, the P-net stage alone,
//! MTCNN's own R-stage NMS threshold, and two cheaper ones (larger smallest face, smaller
//! canvas) it prints the boxes found, then per batch size the median and best wall time of a
//! `detect` call over ROUNDS calls (default 30) and the median per frame.

use std::path::Path;
use std::time::Instant;

use aic_video::roi::{Detector, DetectorConfig, FrameView};

struct Yuv {
    w: u32,
    h: u32,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

fn read_y4m(path: &Path) -> Vec<Yuv> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let eol = |from: usize| from + data[from..].iter().position(|&b| b == b'\n').unwrap();
    let end = eol(0);
    let header = std::str::from_utf8(&data[..end]).unwrap();
    let field = |p: char| -> u32 {
        header
            .split(' ')
            .find_map(|f| f.strip_prefix(p))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (w, h) = (field('W'), field('H'));
    let (ys, cs) = ((w * h) as usize, (w.div_ceil(2) * h.div_ceil(2)) as usize);
    let mut out = Vec::new();
    let mut at = end + 1;
    while at < data.len() {
        at = eol(at) + 1;
        let p = &data[at..at + ys + 2 * cs];
        out.push(Yuv {
            w,
            h,
            y: p[..ys].to_vec(),
            u: p[ys..ys + cs].to_vec(),
            v: p[ys + cs..].to_vec(),
        });
        at += ys + 2 * cs;
    }
    out
}

/// Nearest-neighbour enlargement (a stand-in for a 720p camera picture of the same scene).
fn enlarge(f: &Yuv, w: u32, h: u32) -> Yuv {
    let pick = |src: &[u8], sw: u32, sh: u32, dw: u32, dh: u32| -> Vec<u8> {
        (0..dh)
            .flat_map(|r| (0..dw).map(move |c| (r, c)))
            .map(|(r, c)| src[((r * sh / dh) * sw + c * sw / dw) as usize])
            .collect()
    };
    let (cw, ch) = (f.w.div_ceil(2), f.h.div_ceil(2));
    Yuv {
        w,
        h,
        y: pick(&f.y, f.w, f.h, w, h),
        u: pick(&f.u, cw, ch, w.div_ceil(2), h.div_ceil(2)),
        v: pick(&f.v, cw, ch, w.div_ceil(2), h.div_ceil(2)),
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS"))
        .unwrap_or(30)
        .clamp(1, 1000);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roi_carphone.y4m");
    let small = read_y4m(&fixtures);
    let large: Vec<Yuv> = small.iter().map(|f| enlarge(f, 1280, 720)).collect();
    let default = DetectorConfig::default();
    let configs = [
        ("default (canvas 320x180, min_face 20)", default.clone()),
        (
            "P-net stage only (thresholds 1.0: no proposals)",
            DetectorConfig {
                thresholds: Some([1.0, 1.0, 1.0]),
                ..default.clone()
            },
        ),
        (
            "MTCNN's own R-stage NMS (0.7)",
            DetectorConfig {
                refine_nms: 0.7,
                ..default.clone()
            },
        ),
        (
            "min_face 28",
            DetectorConfig {
                min_face: 28.0,
                ..default.clone()
            },
        ),
        (
            "canvas 256x144",
            DetectorConfig {
                canvas_width: 256,
                canvas_height: 144,
                ..default.clone()
            },
        ),
    ];
    for (label, cfg) in configs {
        let mut det =
            Detector::open(&Detector::default_dir(), cfg).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "== {label}: model {}, {} pyramid levels",
            det.manifest().model_id,
            det.pyramid_levels()
        );
        for (name, set) in [("176x144", &small), ("1280x720", &large)] {
            let views: Vec<FrameView<'_>> = set
                .iter()
                .map(|f| FrameView::yuv420(f.w, f.h, &f.y, &f.u, &f.v))
                .collect();
            let found = det.detect(&views).unwrap();
            println!("{name}: boxes {found:?}");
            for batch in [1usize, 4, 16] {
                let frames: Vec<FrameView<'_>> =
                    (0..batch).map(|i| views[i % views.len()]).collect();
                det.detect(&frames).unwrap(); // warm-up
                let mut times: Vec<f64> = (0..rounds)
                    .map(|_| {
                        let t = Instant::now();
                        let out = det.detect(&frames).unwrap();
                        assert_eq!(out.len(), batch);
                        t.elapsed().as_secs_f64() * 1e3
                    })
                    .collect();
                times.sort_by(f64::total_cmp);
                let median = times[times.len() / 2];
                println!(
                    "{name} batch {batch:2}: {median:7.2} ms per call (best {:7.2}), {:6.2} ms per frame",
                    times[0],
                    median / batch as f64
                );
            }
        }
    }
}
