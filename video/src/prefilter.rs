//! Region of interest for encoders that take no quality map (AV1 through FFmpeg 5.1, see
//! [`encode`](crate::encode)): the picture is low-passed where the map asks for less quality,
//! so those areas cost fewer bits and the rate control spends the rest where detail was kept.
//!
//! The strength of block *b* is `s_b = clamp((offset_b − min offset) / 64, 0, 1)`: the map's
//! best block stays untouched, a block 64 steps worse gets the full filter. Strengths are
//! interpolated bilinearly between block centres so no block edges are painted into the
//! picture, and each pixel becomes `p + s · (blur(p) − p)` with `blur` a 5×5 binomial
//! (`[1 4 6 4 1] / 16` each way) on all three planes (chroma uses the map at half resolution).

use crate::encode::QualityMap;
use crate::frame::Yuv420Frame;

/// Writes the filtered picture into `dst` (resized to `src`'s size if needed).
pub fn smooth_by_map(src: &Yuv420Frame, map: &QualityMap, dst: &mut Yuv420Frame) {
    if dst.width != src.width || dst.height != src.height {
        *dst = src.clone();
    }
    let min = map.offsets.iter().copied().min().unwrap_or(0);
    let strength: Vec<f32> = map
        .offsets
        .iter()
        .map(|&o| {
            ((f32::from(o) - f32::from(min)) / f32::from(QualityMap::MAX_OFFSET)).clamp(0.0, 1.0)
        })
        .collect();
    let (w, h) = (src.width as usize, src.height as usize);
    let (cw, ch) = (src.chroma_width() as usize, src.chroma_height() as usize);
    let block = map.block as f32;
    filter_plane(&src.y, &mut dst.y, w, h, |x, y| {
        weight(map, &strength, block, x, y)
    });
    let half = block / 2.0;
    filter_plane(&src.u, &mut dst.u, cw, ch, |x, y| {
        weight(map, &strength, half, x, y)
    });
    filter_plane(&src.v, &mut dst.v, cw, ch, |x, y| {
        weight(map, &strength, half, x, y)
    });
}

/// The strength at pixel (x, y) of a plane whose blocks are `block` pixels: bilinear between
/// the four nearest block centres.
fn weight(map: &QualityMap, s: &[f32], block: f32, x: usize, y: usize) -> f32 {
    let fx = ((x as f32 + 0.5) / block - 0.5).max(0.0);
    let fy = ((y as f32 + 0.5) / block - 0.5).max(0.0);
    let (c0, r0) = ((fx as u32).min(map.cols - 1), (fy as u32).min(map.rows - 1));
    let (c1, r1) = ((c0 + 1).min(map.cols - 1), (r0 + 1).min(map.rows - 1));
    let (ax, ay) = (
        (fx - c0 as f32).clamp(0.0, 1.0),
        (fy - r0 as f32).clamp(0.0, 1.0),
    );
    let at = |c: u32, r: u32| s[(r * map.cols + c) as usize];
    let top = at(c0, r0) * (1.0 - ax) + at(c1, r0) * ax;
    let bottom = at(c0, r1) * (1.0 - ax) + at(c1, r1) * ax;
    top * (1.0 - ay) + bottom * ay
}

const TAPS: [u32; 5] = [1, 4, 6, 4, 1];

fn filter_plane(
    src: &[u8],
    dst: &mut [u8],
    w: usize,
    h: usize,
    strength: impl Fn(usize, usize) -> f32,
) {
    // Horizontal pass into u16 (sum of taps = 16), edges clamped; then vertical, blended.
    let mut tmp = vec![0u16; w * h];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for x in 0..w {
            let mut acc = 0u32;
            for (k, t) in TAPS.iter().enumerate() {
                let xx = (x + k).saturating_sub(2).min(w - 1);
                acc += t * u32::from(row[xx]);
            }
            tmp[y * w + x] = acc as u16;
        }
    }
    for y in 0..h {
        for x in 0..w {
            let p = src[y * w + x];
            let s = strength(x, y);
            if s <= 0.0 {
                dst[y * w + x] = p;
                continue;
            }
            let mut acc = 0u32;
            for (k, t) in TAPS.iter().enumerate() {
                let yy = (y + k).saturating_sub(2).min(h - 1);
                acc += t * u32::from(tmp[yy * w + x]);
            }
            let blur = acc as f32 / 256.0;
            dst[y * w + x] = (f32::from(p) + s * (blur - f32::from(p)))
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(w: u32, h: u32) -> Yuv420Frame {
        let mut f = Yuv420Frame::grey(w, h).unwrap();
        let mut s = 12345u32;
        for p in f.y.iter_mut().chain(f.u.iter_mut()).chain(f.v.iter_mut()) {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *p = (s >> 16) as u8;
        }
        f
    }

    #[test]
    fn untouched_where_the_map_is_best_smoothed_where_it_is_worst() {
        let src = noise(64, 64);
        let mut map = QualityMap::new(64, 64, 16).unwrap();
        map.offsets.iter_mut().for_each(|o| *o = 48);
        map.fill_rect(0, 0, 32, 32, -16); // top-left quadrant: the ROI, 64 steps better
        let mut dst = src.clone();
        smooth_by_map(&src, &map, &mut dst);
        // Centre of the ROI's first block: strength 0 there (bilinear weights meet the ROI).
        assert_eq!(dst.y[8 * 64 + 8], src.y[8 * 64 + 8]);
        // Far corner: full strength, so much less variance than the noise it came from.
        let var = |f: &Yuv420Frame| {
            let px: Vec<f64> = (48..64)
                .flat_map(|y| (48..64).map(move |x| (y, x)))
                .map(|(y, x)| f64::from(f.y[y * 64 + x]))
                .collect();
            let m = px.iter().sum::<f64>() / px.len() as f64;
            px.iter().map(|p| (p - m).powi(2)).sum::<f64>() / px.len() as f64
        };
        assert!(
            var(&dst) < var(&src) / 4.0,
            "{} vs {}",
            var(&dst),
            var(&src)
        );
    }

    #[test]
    fn a_flat_map_changes_nothing() {
        let src = noise(40, 30);
        let map = QualityMap::new(40, 30, 8).unwrap();
        let mut dst = Yuv420Frame::grey(2, 2).unwrap();
        smooth_by_map(&src, &map, &mut dst);
        assert_eq!(dst, src);
    }
}
