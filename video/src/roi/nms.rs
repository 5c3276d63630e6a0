//! Greedy non-maximum suppression.

use super::RoiBox;

/// How two boxes' overlap is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlap {
    /// Intersection over union.
    Union,
    /// Intersection over the smaller box (MTCNN's last stage: drops a box inside a larger one).
    Min,
}

/// Overlap of two boxes (0 when either is empty).
pub fn iou(a: &RoiBox, b: &RoiBox, mode: Overlap) -> f32 {
    let w = (a.x1.min(b.x1) - a.x0.max(b.x0)).max(0.0);
    let h = (a.y1.min(b.y1) - a.y0.max(b.y0)).max(0.0);
    let inter = w * h;
    let denom = match mode {
        Overlap::Union => a.area() + b.area() - inter,
        Overlap::Min => a.area().min(b.area()),
    };
    if denom > 0.0 { inter / denom } else { 0.0 }
}

/// The indices of `boxes` kept by greedy NMS, best score first: a box is dropped when it
/// overlaps an already kept one by more than `threshold`. Ties keep the lower index.
pub fn nms(boxes: &[RoiBox], threshold: f32, mode: Overlap) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| boxes[b].score.total_cmp(&boxes[a].score).then(a.cmp(&b)));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep
            .iter()
            .all(|&k| iou(&boxes[k], &boxes[i], mode) <= threshold)
        {
            keep.push(i);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x0: f32, y0: f32, x1: f32, y1: f32, score: f32) -> RoiBox {
        RoiBox {
            x0,
            y0,
            x1,
            y1,
            score,
        }
    }

    #[test]
    fn overlapping_boxes_keep_the_best_and_distant_ones_survive() {
        let boxes = [
            b(0.0, 0.0, 10.0, 10.0, 0.8),
            b(1.0, 1.0, 11.0, 11.0, 0.9),
            b(50.0, 50.0, 60.0, 60.0, 0.7),
        ];
        assert_eq!(nms(&boxes, 0.5, Overlap::Union), vec![1, 2]);
    }

    #[test]
    fn min_mode_drops_a_box_inside_a_larger_one() {
        let boxes = [
            b(0.0, 0.0, 100.0, 100.0, 0.9),
            b(10.0, 10.0, 30.0, 30.0, 0.95),
        ];
        // IoU is small (0.04), but the small box lies wholly inside the large one.
        assert_eq!(nms(&boxes, 0.7, Overlap::Union), vec![1, 0]);
        assert_eq!(nms(&boxes, 0.7, Overlap::Min), vec![1]);
    }

    #[test]
    fn iou_of_identical_and_disjoint_boxes() {
        let a = b(0.0, 0.0, 4.0, 4.0, 1.0);
        assert_eq!(iou(&a, &a, Overlap::Union), 1.0);
        assert_eq!(iou(&a, &b(5.0, 5.0, 6.0, 6.0, 1.0), Overlap::Union), 0.0);
    }
}
