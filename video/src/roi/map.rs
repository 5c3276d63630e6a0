//! Boxes → per-block quality offsets (pure).

use super::{QualityMap, RoiBox};

/// How boxes become offsets. Offsets follow [`QualityMap`]: negative = better quality.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapStyle {
    /// Blocks that touch a box of score 1.
    pub inside: i8,
    /// Blocks farther than the margin from every box.
    pub outside: i8,
    /// Width of the soft margin around a box, as a fraction of the box's longer side: the
    /// offset goes linearly from `inside` (touching the box) to `outside` (at the margin's edge),
    /// so hair, chin and shoulders are not cut off at a hard edge.
    pub margin: f32,
}

impl Default for MapStyle {
    /// −12/64 of the quantiser range on faces (about −4.5 QP for x264), +6/64 elsewhere: the
    /// bits a face gains come mostly from the background, so the rate stays near its target.
    fn default() -> Self {
        MapStyle {
            inside: -12,
            outside: 6,
            margin: 0.5,
        }
    }
}

/// [`quality_map_with`] the default [`MapStyle`].
pub fn quality_map(boxes: &[RoiBox], width: u32, height: u32, block: u32) -> QualityMap {
    quality_map_with(boxes, width, height, block, &MapStyle::default())
}

/// The per-block offsets of a `width × height` picture cut into `block`-pixel squares (block
/// clamped to 4..=256, what the encoder accepts). Each block takes its strongest box: `p` = the
/// box's score (clamped to 0..=1) times its proximity (1 when the block touches the box, falling
/// linearly to 0 at the margin's edge), offset = `outside + (inside − outside) · p`, rounded.
/// So every offset lies between `inside` and `outside` (and within ±64); no boxes gives an
/// all-zero map (no preference: the encoder's own adaptive quantisation decides).
pub fn quality_map_with(
    boxes: &[RoiBox],
    width: u32,
    height: u32,
    block: u32,
    style: &MapStyle,
) -> QualityMap {
    let block = block.clamp(4, 256);
    let (cols, rows) = (width.div_ceil(block), height.div_ceil(block));
    let lim = QualityMap::MAX_OFFSET;
    let (inside, outside) = (
        style.inside.clamp(-lim, lim) as f32,
        style.outside.clamp(-lim, lim) as f32,
    );
    let margin = style.margin.max(0.0);
    let boxes: Vec<&RoiBox> = boxes
        .iter()
        .filter(|b| b.area() > 0.0 && b.score > 0.0 && b.score.is_finite())
        .collect();
    let mut offsets = Vec::with_capacity((cols * rows) as usize);
    for r in 0..rows {
        for c in 0..cols {
            if boxes.is_empty() {
                offsets.push(0);
                continue;
            }
            let (bx0, by0) = ((c * block) as f32, (r * block) as f32);
            let (bx1, by1) = (
                ((c + 1) * block).min(width) as f32,
                ((r + 1) * block).min(height) as f32,
            );
            let p = boxes
                .iter()
                .map(|b| {
                    // Gap between the block and the box along each axis (0 when they overlap).
                    let dx = (b.x0 - bx1).max(bx0 - b.x1).max(0.0);
                    let dy = (b.y0 - by1).max(by0 - b.y1).max(0.0);
                    let d = (dx * dx + dy * dy).sqrt();
                    let reach = margin * b.width().max(b.height());
                    let near = if d <= 0.0 {
                        1.0
                    } else if reach > 0.0 {
                        (1.0 - d / reach).max(0.0)
                    } else {
                        0.0
                    };
                    b.score.min(1.0) * near
                })
                .fold(0.0f32, f32::max);
            let o = (outside + (inside - outside) * p).round();
            offsets.push(o.clamp(-(lim as f32), lim as f32) as i8);
        }
    }
    QualityMap {
        block,
        cols,
        rows,
        offsets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_face_gets_inside_its_blocks_and_outside_far_away() {
        let face = RoiBox {
            x0: 40.0,
            y0: 40.0,
            x1: 80.0,
            y1: 90.0,
            score: 1.0,
        };
        let m = quality_map(&[face], 320, 180, 16);
        assert_eq!((m.cols, m.rows, m.offsets.len()), (20, 12, 240));
        assert_eq!(m.offset_at(60, 60), -12);
        assert_eq!(m.offset_at(300, 170), 6);
        // In the margin: between the two.
        let edge = m.offset_at(40 + 50 + 8, 60);
        assert!(-12 < edge && edge < 6, "{edge}");
    }

    #[test]
    fn no_boxes_is_no_preference() {
        let m = quality_map(&[], 100, 50, 16);
        assert!(m.offsets.iter().all(|&o| o == 0));
        assert_eq!((m.cols, m.rows), (7, 4));
    }
}
