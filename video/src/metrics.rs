//! Full-reference picture quality on the luma plane: PSNR (whole frame or inside a region) and
//! MS-SSIM. Written here because no maintained Rust crate computes standard MS-SSIM (`dssim`
//! computes its own multi-scale variant in L*a*b*, not Wang et al.'s); both are short.
//! VMAF comes from outside (`video/eval_vmaf.py`, optional).

use crate::frame::Yuv420Frame;

/// PSNR of a frame whose mean squared error is 0 (identical pictures): reported as this cap
/// rather than infinity, as libvmaf does for 8-bit input.
pub const PSNR_CAP_DB: f64 = 100.0;

/// PSNR of the Y plane in dB (8-bit peak 255), capped at [`PSNR_CAP_DB`].
pub fn psnr_y(reference: &Yuv420Frame, degraded: &Yuv420Frame) -> f64 {
    assert_same_size(reference, degraded);
    psnr_from_mse(mse(reference.y.iter().zip(&degraded.y)))
}

/// PSNR of the Y plane over the pixels where `inside(x, y)` holds (`None` when no pixel does).
pub fn psnr_y_where(
    reference: &Yuv420Frame,
    degraded: &Yuv420Frame,
    inside: impl Fn(u32, u32) -> bool,
) -> Option<f64> {
    assert_same_size(reference, degraded);
    let w = reference.width;
    let pairs = reference
        .y
        .iter()
        .zip(&degraded.y)
        .enumerate()
        .filter(|(i, _)| inside(*i as u32 % w, *i as u32 / w))
        .map(|(_, p)| p);
    let (sum, n) = pairs.fold((0.0f64, 0usize), |(s, n), (a, b)| {
        let d = f64::from(*a) - f64::from(*b);
        (s + d * d, n + 1)
    });
    (n > 0).then(|| psnr_from_mse(sum / n as f64))
}

fn mse<'a>(pairs: impl Iterator<Item = (&'a u8, &'a u8)>) -> f64 {
    let (sum, n) = pairs.fold((0.0f64, 0usize), |(s, n), (a, b)| {
        let d = f64::from(*a) - f64::from(*b);
        (s + d * d, n + 1)
    });
    if n == 0 { 0.0 } else { sum / n as f64 }
}

fn psnr_from_mse(mse: f64) -> f64 {
    if mse <= 0.0 {
        PSNR_CAP_DB
    } else {
        (10.0 * (255.0 * 255.0 / mse).log10()).min(PSNR_CAP_DB)
    }
}

fn assert_same_size(a: &Yuv420Frame, b: &Yuv420Frame) {
    assert!(
        a.width == b.width && a.height == b.height,
        "metric on {}x{} vs {}x{}",
        a.width,
        a.height,
        b.width,
        b.height
    );
}

/// MS-SSIM weights of Wang, Simoncelli & Bovik (2003), finest scale first.
const MS_WEIGHTS: [f64; 5] = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333];

/// MS-SSIM of the Y plane (Wang, Simoncelli & Bovik 2003): five scales, an 11-tap Gaussian
/// window with σ = 1.5, K1 = 0.01, K2 = 0.03, 2×2 averaging between scales, the contrast–
/// structure term at scales 1–4 and the full SSIM at scale 5, combined with the paper's weights;
/// negative terms are clamped to 0 (as `pytorch_msssim` does). Edges are mirrored rather than
/// cropped, so small pictures (QCIF's coarsest scale is 11×9) are defined; for such pictures the
/// value is close to, not bit-equal with, implementations that crop ("valid" windows).
pub fn ms_ssim_y(reference: &Yuv420Frame, degraded: &Yuv420Frame) -> f64 {
    assert_same_size(reference, degraded);
    let mut w = reference.width as usize;
    let mut h = reference.height as usize;
    let mut a: Vec<f32> = reference.y.iter().map(|&p| f32::from(p)).collect();
    let mut b: Vec<f32> = degraded.y.iter().map(|&p| f32::from(p)).collect();
    let mut result = 1.0f64;
    for (scale, weight) in MS_WEIGHTS.iter().enumerate() {
        let (l, cs) = ssim_terms(&a, &b, w, h);
        let last = scale == MS_WEIGHTS.len() - 1;
        let term = if last { l * cs } else { cs };
        result *= term.max(0.0).powf(*weight);
        if !last {
            if w < 2 || h < 2 {
                // Too small to halve again: the remaining scales see the same picture.
                continue;
            }
            let (na, nw, nh) = halve(&a, w, h);
            let (nb, _, _) = halve(&b, w, h);
            (a, b, w, h) = (na, nb, nw, nh);
        }
    }
    result
}

/// Mean luminance and contrast–structure terms of SSIM over one scale.
fn ssim_terms(a: &[f32], b: &[f32], w: usize, h: usize) -> (f64, f64) {
    const C1: f32 = (0.01 * 255.0) * (0.01 * 255.0);
    const C2: f32 = (0.03 * 255.0) * (0.03 * 255.0);
    let ab: Vec<f32> = a.iter().zip(b).map(|(x, y)| x * y).collect();
    let aa: Vec<f32> = a.iter().map(|x| x * x).collect();
    let bb: Vec<f32> = b.iter().map(|x| x * x).collect();
    let k = gaussian();
    let (ma, mb) = (blur(a, w, h, &k), blur(b, w, h, &k));
    let (saa, sbb, sab) = (
        blur(&aa, w, h, &k),
        blur(&bb, w, h, &k),
        blur(&ab, w, h, &k),
    );
    let (mut l_sum, mut cs_sum) = (0.0f64, 0.0f64);
    for i in 0..w * h {
        let (mx, my) = (ma[i], mb[i]);
        let vx = (saa[i] - mx * mx).max(0.0);
        let vy = (sbb[i] - my * my).max(0.0);
        let cov = sab[i] - mx * my;
        l_sum += f64::from((2.0 * mx * my + C1) / (mx * mx + my * my + C1));
        cs_sum += f64::from((2.0 * cov + C2) / (vx + vy + C2));
    }
    let n = (w * h) as f64;
    (l_sum / n, cs_sum / n)
}

fn gaussian() -> [f32; 11] {
    let mut k = [0.0f32; 11];
    let sigma = 1.5f32;
    for (i, v) in k.iter_mut().enumerate() {
        let x = i as f32 - 5.0;
        *v = (-(x * x) / (2.0 * sigma * sigma)).exp();
    }
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

/// Mirrors index `i` (may be out of range by up to the window radius) into `0..n`.
fn mirror(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut j = i.rem_euclid(period);
    if j >= n {
        j = period - j;
    }
    j as usize
}

/// Separable 11-tap filter with mirrored edges.
fn blur(src: &[f32], w: usize, h: usize, k: &[f32; 11]) -> Vec<f32> {
    let mut tmp = vec![0.0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (t, kv) in k.iter().enumerate() {
                acc += kv * src[y * w + mirror(x as isize + t as isize - 5, w)];
            }
            tmp[y * w + x] = acc;
        }
    }
    let mut out = vec![0.0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (t, kv) in k.iter().enumerate() {
                acc += kv * tmp[mirror(y as isize + t as isize - 5, h) * w + x];
            }
            out[y * w + x] = acc;
        }
    }
    out
}

/// 2×2 average (an odd last row/column is dropped, as `avg_pool2d` does).
fn halve(src: &[f32], w: usize, h: usize) -> (Vec<f32>, usize, usize) {
    let (nw, nh) = (w / 2, h / 2);
    let mut out = Vec::with_capacity(nw * nh);
    for y in 0..nh {
        for x in 0..nw {
            let i = 2 * y * w + 2 * x;
            out.push((src[i] + src[i + 1] + src[i + w] + src[i + w + 1]) / 4.0);
        }
    }
    (out, nw, nh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(w: u32, h: u32, seed: u32) -> Yuv420Frame {
        let mut f = Yuv420Frame::grey(w, h).unwrap();
        let mut s = seed;
        for (i, p) in f.y.iter_mut().enumerate() {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let (x, y) = (i as u32 % w, i as u32 / w);
            *p = (((x * 7 + y * 3) % 200) as u8).wrapping_add(((s >> 16) % 40) as u8);
        }
        f
    }

    #[test]
    fn psnr_of_a_known_error() {
        let a = Yuv420Frame::grey(16, 16).unwrap();
        let mut b = a.clone();
        b.y.iter_mut().for_each(|p| *p += 10); // MSE 100 → 10·log10(65025/100) = 28.13 dB
        assert!((psnr_y(&a, &b) - 28.1308).abs() < 1e-3);
        assert_eq!(psnr_y(&a, &a), PSNR_CAP_DB);
        // Only the left half differs: inside it 28.13 dB, outside it identical.
        let mut c = a.clone();
        for y in 0..16 {
            for x in 0..8 {
                c.y[y * 16 + x] += 10;
            }
        }
        assert!((psnr_y_where(&a, &c, |x, _| x < 8).unwrap() - 28.1308).abs() < 1e-3);
        assert_eq!(psnr_y_where(&a, &c, |x, _| x >= 8), Some(PSNR_CAP_DB));
        assert_eq!(psnr_y_where(&a, &c, |_, _| false), None);
    }

    #[test]
    fn ms_ssim_is_one_for_identical_and_falls_with_damage() {
        let a = pattern(176, 144, 1);
        assert!((ms_ssim_y(&a, &a) - 1.0).abs() < 1e-6);
        let mut light = a.clone();
        let mut heavy = a.clone();
        let mut s = 7u32;
        for (l, hv) in light.y.iter_mut().zip(heavy.y.iter_mut()) {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let n = ((s >> 16) % 9) as i32 - 4;
            *l = (i32::from(*l) + n).clamp(0, 255) as u8;
            *hv = (i32::from(*hv) + 6 * n).clamp(0, 255) as u8;
        }
        let (ml, mh) = (ms_ssim_y(&a, &light), ms_ssim_y(&a, &heavy));
        assert!(ml < 1.0 && mh < ml && mh > 0.0, "light {ml}, heavy {mh}");
    }

    #[test]
    fn mirror_stays_in_range() {
        for n in 1..6 {
            for i in -12..20 {
                assert!(mirror(i, n) < n);
            }
        }
        assert_eq!(mirror(-1, 5), 1);
        assert_eq!(mirror(5, 5), 3);
    }
}
