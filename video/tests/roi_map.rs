//! `quality_map` properties (no model needed).

use aic_video::QualityMap;
use aic_video::roi::{MapStyle, RoiBox, quality_map, quality_map_with};
use proptest::prelude::*;

fn arb_box(w: u32, h: u32) -> impl Strategy<Value = RoiBox> {
    (
        0.0..w as f32,
        0.0..h as f32,
        1.0..w as f32,
        1.0..h as f32,
        0.0f32..=1.0,
    )
        .prop_map(move |(x, y, bw, bh, score)| RoiBox {
            x0: x,
            y0: y,
            x1: (x + bw).min(w as f32),
            y1: (y + bh).min(h as f32),
            score,
        })
}

fn arb_case() -> impl Strategy<Value = (u32, u32, u32, Vec<RoiBox>, MapStyle)> {
    (
        16u32..1300,
        16u32..740,
        prop::sample::select(vec![4u32, 8, 16, 32, 64]),
    )
        .prop_flat_map(|(w, h, block)| {
            (
                Just(w),
                Just(h),
                Just(block),
                prop::collection::vec(arb_box(w, h), 0..5),
                (-64i8..=0, 0i8..=64, 0.0f32..2.0).prop_map(|(inside, outside, margin)| MapStyle {
                    inside,
                    outside,
                    margin,
                }),
            )
        })
}

/// Whether block (c, r) of `m` touches box `b`.
fn touches(m: &QualityMap, w: u32, h: u32, c: u32, r: u32, b: &RoiBox) -> bool {
    let (x0, y0) = ((c * m.block) as f32, (r * m.block) as f32);
    let (x1, y1) = (
        ((c + 1) * m.block).min(w) as f32,
        ((r + 1) * m.block).min(h) as f32,
    );
    x0 <= b.x1 && b.x0 <= x1 && y0 <= b.y1 && b.y0 <= y1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The map fits the picture, the encoder accepts it, and every offset lies between
    /// `inside` and `outside`.
    #[test]
    fn offsets_are_bounded((w, h, block, boxes, style) in arb_case()) {
        let m = quality_map_with(&boxes, w, h, block, &style);
        prop_assert_eq!(m.block, block);
        prop_assert_eq!((m.cols, m.rows), (w.div_ceil(block), h.div_ceil(block)));
        prop_assert!(m.validate(w, h).is_ok());
        let visible = boxes.iter().any(|b| b.area() > 0.0 && b.score > 0.0);
        for &o in &m.offsets {
            if visible {
                prop_assert!(style.inside <= o && o <= style.outside, "{o} {style:?}");
            } else {
                prop_assert_eq!(o, 0);
            }
        }
    }

    /// With confident boxes (score 1), a block touching a box never gets a worse offset than a
    /// block touching none; blocks touching a box get exactly `inside`.
    #[test]
    fn inside_blocks_are_never_worse_than_outside_blocks((w, h, block, boxes, style) in arb_case()) {
        let boxes: Vec<RoiBox> = boxes.into_iter().map(|b| RoiBox { score: 1.0, ..b }).collect();
        let m = quality_map_with(&boxes, w, h, block, &style);
        let mut inside_max = i8::MIN;
        let mut outside_min = i8::MAX;
        for r in 0..m.rows {
            for c in 0..m.cols {
                let o = m.offsets[(r * m.cols + c) as usize];
                if boxes.iter().any(|b| b.area() > 0.0 && touches(&m, w, h, c, r, b)) {
                    prop_assert_eq!(o, style.inside);
                    inside_max = inside_max.max(o);
                } else {
                    outside_min = outside_min.min(o);
                }
            }
        }
        prop_assert!(inside_max <= outside_min || inside_max == i8::MIN || outside_min == i8::MAX);
    }

    /// A weaker box never asks for more quality than a stronger one at the same place.
    #[test]
    fn offsets_follow_the_score(
        (w, h, block, boxes, _style) in arb_case(), s in 0.0f32..=1.0,
    ) {
        prop_assume!(!boxes.is_empty());
        let strong: Vec<RoiBox> = boxes.iter().map(|b| RoiBox { score: 1.0, ..*b }).collect();
        let weak: Vec<RoiBox> = boxes.iter().map(|b| RoiBox { score: s.max(1e-3), ..*b }).collect();
        let (ms, mw) = (quality_map(&strong, w, h, block), quality_map(&weak, w, h, block));
        for (a, b) in ms.offsets.iter().zip(&mw.offsets) {
            prop_assert!(a <= b);
        }
    }
}
