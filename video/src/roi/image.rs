//! Frames in, the detector's canvas out: letterboxing, YUV → RGB, and area resampling.
//!
//! One resampler serves the canvas, the pyramid and the R-/O-net crops: a separable box filter
//! with fractional coverage at the window ends (MTCNN's reference resizes with "area"
//! interpolation). It is written here rather than taken from a crate because it must read
//! strided planes, sub-rectangles at fractional positions and `f32` canvases alike, and it is
//! 60 lines.

use super::RoiError;
use crate::frame::Yuv420Frame;

/// A borrowed picture the detector can read. Rows may be padded (`stride` ≥ the row's bytes),
/// as FFmpeg's frames are.
#[derive(Clone, Copy, Debug)]
pub enum FrameView<'a> {
    /// 8-bit YUV 4:2:0 (BT.601, limited range); chroma planes are `ceil(w/2) × ceil(h/2)`.
    Yuv420 {
        width: u32,
        height: u32,
        y: &'a [u8],
        y_stride: usize,
        u: &'a [u8],
        v: &'a [u8],
        uv_stride: usize,
    },
    /// The luma plane only (or any 8-bit grey picture): the detector sees grey.
    Luma {
        width: u32,
        height: u32,
        y: &'a [u8],
        stride: usize,
    },
    /// Packed 8-bit RGB (`RGB24`), `stride` bytes per row.
    Rgb {
        width: u32,
        height: u32,
        data: &'a [u8],
        stride: usize,
    },
}

impl<'a> FrameView<'a> {
    /// Tightly packed YUV 4:2:0 planes.
    pub fn yuv420(width: u32, height: u32, y: &'a [u8], u: &'a [u8], v: &'a [u8]) -> Self {
        FrameView::Yuv420 {
            width,
            height,
            y,
            y_stride: width as usize,
            u,
            v,
            uv_stride: width.div_ceil(2) as usize,
        }
    }

    pub fn width(&self) -> u32 {
        match *self {
            FrameView::Yuv420 { width, .. }
            | FrameView::Luma { width, .. }
            | FrameView::Rgb { width, .. } => width,
        }
    }

    pub fn height(&self) -> u32 {
        match *self {
            FrameView::Yuv420 { height, .. }
            | FrameView::Luma { height, .. }
            | FrameView::Rgb { height, .. } => height,
        }
    }

    /// Checks sizes and that every plane holds its rows.
    pub fn check(&self) -> Result<(), RoiError> {
        let (w, h) = (self.width() as usize, self.height() as usize);
        if w == 0 || h == 0 || w > 16384 || h > 16384 {
            return Err(RoiError::InvalidFrame(format!(
                "size {w}x{h} (expected 1..=16384 each)"
            )));
        }
        let plane = |name: &str, len: usize, stride: usize, pw: usize, ph: usize| {
            if stride < pw || len < stride * (ph - 1) + pw {
                Err(RoiError::InvalidFrame(format!(
                    "{name} plane: {len} bytes, stride {stride} for {pw}x{ph}"
                )))
            } else {
                Ok(())
            }
        };
        match *self {
            FrameView::Yuv420 {
                y,
                y_stride,
                u,
                v,
                uv_stride,
                ..
            } => {
                let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
                plane("Y", y.len(), y_stride, w, h)?;
                plane("U", u.len(), uv_stride, cw, ch)?;
                plane("V", v.len(), uv_stride, cw, ch)
            }
            FrameView::Luma { y, stride, .. } => plane("Y", y.len(), stride, w, h),
            FrameView::Rgb { data, stride, .. } => plane("RGB", data.len(), stride, 3 * w, h),
        }
    }
}

impl<'a> From<&'a Yuv420Frame> for FrameView<'a> {
    fn from(f: &'a Yuv420Frame) -> Self {
        FrameView::yuv420(f.width, f.height, &f.y, &f.u, &f.v)
    }
}

/// Separable resampling weights along one axis: output `i` is
/// `Σ_k weights[i][k] · src[first[i] + k]`.
#[derive(Clone, Debug)]
pub(crate) struct Axis {
    taps: Vec<(usize, Vec<f32>)>,
}

impl Axis {
    /// Box-filter weights mapping the source interval `[start, start + len)` (in source pixels,
    /// inside `0..n_src`) onto `dst` output pixels.
    pub(crate) fn area(start: f32, len: f32, n_src: usize, dst: usize) -> Self {
        let step = len / dst as f32;
        let taps = (0..dst)
            .map(|i| {
                let a = (start + i as f32 * step).clamp(0.0, n_src as f32);
                let b = (start + (i + 1) as f32 * step).clamp(0.0, n_src as f32);
                let first = (a.floor() as usize).min(n_src - 1);
                let last = ((b.ceil() as usize).max(first + 1)).min(n_src);
                let mut w: Vec<f32> = (first..last)
                    .map(|k| (b.min(k as f32 + 1.0) - a.max(k as f32)).max(0.0))
                    .collect();
                let sum: f32 = w.iter().sum();
                if sum > 0.0 {
                    w.iter_mut().for_each(|x| *x /= sum);
                } else {
                    // A zero-width window (a crop on the edge): take the nearest pixel.
                    w.iter_mut().for_each(|x| *x = 0.0);
                    w[0] = 1.0;
                }
                (first, w)
            })
            .collect();
        Axis { taps }
    }

    fn len(&self) -> usize {
        self.taps.len()
    }

    /// The source rows/columns this axis reads.
    fn span(&self) -> (usize, usize) {
        let lo = self.taps.iter().map(|t| t.0).min().unwrap_or(0);
        let hi = self.taps.iter().map(|t| t.0 + t.1.len()).max().unwrap_or(0);
        (lo, hi)
    }
}

/// Resamples one channel. `src[y * stride + x * step]` is pixel (x, y); the output goes to
/// `dst[y * dst_stride + x]` for `x < xs.len()`, `y < ys.len()`. `tmp` is scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn resample<T: Copy + Into<f32>>(
    src: &[T],
    stride: usize,
    step: usize,
    xs: &Axis,
    ys: &Axis,
    dst: &mut [f32],
    dst_stride: usize,
    tmp: &mut Vec<f32>,
) {
    let (r0, r1) = ys.span();
    let dw = xs.len();
    tmp.clear();
    tmp.resize((r1 - r0) * dw, 0.0);
    for r in r0..r1 {
        let row = &src[r * stride..];
        let out = &mut tmp[(r - r0) * dw..(r - r0 + 1) * dw];
        for (o, (first, w)) in out.iter_mut().zip(&xs.taps) {
            *o = w
                .iter()
                .enumerate()
                .map(|(k, &wk)| wk * row[(first + k) * step].into())
                .sum();
        }
    }
    for (y, (first, w)) in ys.taps.iter().enumerate() {
        let out = &mut dst[y * dst_stride..y * dst_stride + dw];
        out.fill(0.0);
        for (k, &wk) in w.iter().enumerate() {
            let row = &tmp[(first + k - r0) * dw..(first + k - r0 + 1) * dw];
            for (o, &s) in out.iter_mut().zip(row) {
                *o += wk * s;
            }
        }
    }
}

/// Grey of the letterbox padding (normalises to ~0 inside the graphs).
pub(crate) const PAD: f32 = 128.0;

/// A frame letterboxed onto the detector's canvas: planar RGB `f32` in 0..255, `3 × h × w`,
/// the picture at the top-left corner scaled by `scale`, grey to the right or below it.
#[derive(Clone, Debug)]
pub(crate) struct Canvas {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) rgb: Vec<f32>,
    /// Canvas pixels per frame pixel.
    pub(crate) scale: f32,
    /// The picture's extent on the canvas.
    pub(crate) content_w: usize,
    pub(crate) content_h: usize,
}

impl Canvas {
    pub(crate) fn new(width: usize, height: usize) -> Self {
        Canvas {
            width,
            height,
            rgb: vec![PAD; 3 * width * height],
            scale: 1.0,
            content_w: width,
            content_h: height,
        }
    }

    pub(crate) fn plane(&self, c: usize) -> &[f32] {
        let n = self.width * self.height;
        &self.rgb[c * n..(c + 1) * n]
    }

    /// Draws `frame` onto the canvas (letterboxed, aspect kept).
    pub(crate) fn fill(
        &mut self,
        frame: &FrameView<'_>,
        tmp: &mut Vec<f32>,
        planes: &mut Vec<f32>,
    ) -> Result<(), RoiError> {
        frame.check()?;
        let (fw, fh) = (frame.width() as usize, frame.height() as usize);
        let scale = (self.width as f32 / fw as f32).min(self.height as f32 / fh as f32);
        let cw = ((fw as f32 * scale).round() as usize).clamp(1, self.width);
        let ch = ((fh as f32 * scale).round() as usize).clamp(1, self.height);
        self.scale = scale;
        self.content_w = cw;
        self.content_h = ch;
        self.rgb.fill(PAD);
        let (w, n) = (self.width, self.width * self.height);
        let xs = Axis::area(0.0, fw as f32, fw, cw);
        let ys = Axis::area(0.0, fh as f32, fh, ch);
        match *frame {
            FrameView::Rgb { data, stride, .. } => {
                for c in 0..3 {
                    resample(
                        &data[c..],
                        stride,
                        3,
                        &xs,
                        &ys,
                        &mut self.rgb[c * n..],
                        w,
                        tmp,
                    );
                }
            }
            FrameView::Luma { y, stride, .. } => {
                resample(y, stride, 1, &xs, &ys, &mut self.rgb[..], w, tmp);
                for i in 0..ch {
                    for j in 0..cw {
                        let g = (1.164 * (self.rgb[i * w + j] - 16.0)).clamp(0.0, 255.0);
                        self.rgb[i * w + j] = g;
                        self.rgb[n + i * w + j] = g;
                        self.rgb[2 * n + i * w + j] = g;
                    }
                }
            }
            FrameView::Yuv420 {
                y,
                y_stride,
                u,
                v,
                uv_stride,
                ..
            } => {
                // Y, U, V resampled to the content size, then BT.601 limited range → RGB.
                planes.clear();
                planes.resize(3 * cw * ch, 0.0);
                let (pw, ph) = (fw.div_ceil(2), fh.div_ceil(2));
                let cxs = Axis::area(0.0, pw as f32, pw, cw);
                let cys = Axis::area(0.0, ph as f32, ph, ch);
                let (py, rest) = planes.split_at_mut(cw * ch);
                let (pu, pv) = rest.split_at_mut(cw * ch);
                resample(y, y_stride, 1, &xs, &ys, py, cw, tmp);
                resample(u, uv_stride, 1, &cxs, &cys, pu, cw, tmp);
                resample(v, uv_stride, 1, &cxs, &cys, pv, cw, tmp);
                for i in 0..ch {
                    for j in 0..cw {
                        let k = i * cw + j;
                        let (l, cb, cr) = (1.164 * (py[k] - 16.0), pu[k] - 128.0, pv[k] - 128.0);
                        self.rgb[i * w + j] = (l + 1.596 * cr).clamp(0.0, 255.0);
                        self.rgb[n + i * w + j] = (l - 0.392 * cb - 0.813 * cr).clamp(0.0, 255.0);
                        self.rgb[2 * n + i * w + j] = (l + 2.017 * cb).clamp(0.0, 255.0);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the canvas region `[x0, x1) × [y0, y1)` (canvas pixels, clipped to the picture)
    /// resampled to `size × size` into `out` (planar RGB, `3 × size × size`).
    pub(crate) fn crop(&self, region: [f32; 4], size: usize, out: &mut [f32], tmp: &mut Vec<f32>) {
        let [x0, y0, x1, y1] = region;
        let xs = Axis::area(x0, x1 - x0, self.content_w, size);
        let ys = Axis::area(y0, y1 - y0, self.content_h, size);
        let n = size * size;
        for c in 0..3 {
            resample(
                self.plane(c),
                self.width,
                1,
                &xs,
                &ys,
                &mut out[c * n..(c + 1) * n],
                size,
                tmp,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_weights_average_whole_pixels_when_shrinking_by_two() {
        let src: Vec<u8> = (0..16).collect(); // 4x4, value = index
        let xs = Axis::area(0.0, 4.0, 4, 2);
        let ys = Axis::area(0.0, 4.0, 4, 2);
        let mut dst = vec![0.0; 4];
        resample(&src, 4, 1, &xs, &ys, &mut dst, 2, &mut Vec::new());
        // Top-left 2x2 block: 0, 1, 4, 5.
        assert_eq!(dst, vec![2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn area_weights_sum_to_one_for_fractional_windows() {
        for (start, len, n, dst) in [(0.0, 7.0, 7, 3), (1.5, 4.2, 9, 24), (0.0, 180.0, 180, 109)] {
            let a = Axis::area(start, len, n, dst);
            for (first, w) in &a.taps {
                assert!(first + w.len() <= n);
                let s: f32 = w.iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{s}");
            }
        }
    }

    #[test]
    fn letterbox_keeps_aspect_and_pads_grey() {
        let (w, h) = (176u32, 144u32);
        let y = vec![235u8; (w * h) as usize];
        let c = vec![128u8; (w.div_ceil(2) * h.div_ceil(2)) as usize];
        let mut canvas = Canvas::new(320, 180);
        canvas
            .fill(
                &FrameView::yuv420(w, h, &y, &c, &c),
                &mut Vec::new(),
                &mut Vec::new(),
            )
            .unwrap();
        assert_eq!((canvas.content_w, canvas.content_h), (220, 180));
        // White picture (Y = 235 is limited-range white), grey padding to its right.
        assert!((canvas.plane(1)[10 * 320 + 100] - 255.0).abs() < 1.0);
        assert_eq!(canvas.plane(0)[10 * 320 + 300], PAD);
    }

    #[test]
    fn short_planes_are_rejected() {
        let y = vec![0u8; 10];
        let f = FrameView::Luma {
            width: 4,
            height: 4,
            y: &y,
            stride: 4,
        };
        assert!(f.check().is_err());
    }
}
