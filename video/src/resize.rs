//! Picture size changes for test media: a centred crop to the target's aspect ratio, then
//! FFmpeg's bicubic scaler (`libswscale`). Used to make 360p / 720p inputs for the real-time
//! bench from the QCIF test clips; upscaled pictures are smoother than camera pictures of that
//! size (less detail, less noise), so encoders find them easier than real 360p / 720p.

use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;

use crate::decode::from_ffmpeg;
use crate::encode::to_ffmpeg;
use crate::error::{Error, Result, ff};
use crate::frame::{Yuv420Frame, check_size};

/// The largest centred rectangle of `src_w × src_h` with the aspect ratio of `dst_w × dst_h`
/// (even offsets and sizes): `(x, y, w, h)`.
pub fn centre_crop(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> (u32, u32, u32, u32) {
    let (sw, sh, dw, dh) = (
        u64::from(src_w),
        u64::from(src_h),
        u64::from(dst_w),
        u64::from(dst_h),
    );
    let (w, h) = if sw * dh > sh * dw {
        ((sh * dw / dh) as u32, src_h)
    } else {
        (src_w, (sw * dh / dw) as u32)
    };
    let (w, h) = ((w & !1).max(2).min(src_w), (h & !1).max(2).min(src_h));
    (((src_w - w) / 2) & !1, ((src_h - h) / 2) & !1, w, h)
}

/// Crops the centre of every frame to the aspect of `width × height` and scales it there.
pub fn resize_all(frames: &[Yuv420Frame], width: u32, height: u32) -> Result<Vec<Yuv420Frame>> {
    check_size(width, height)?;
    let Some(first) = frames.first() else {
        return Ok(Vec::new());
    };
    crate::init()?;
    let (x, y, w, h) = centre_crop(first.width, first.height, width, height);
    let mut sc = scaling::Context::get(
        Pixel::YUV420P,
        w,
        h,
        Pixel::YUV420P,
        width,
        height,
        scaling::Flags::BICUBIC,
    )
    .map_err(ff("scaler"))?;
    let mut out = Vec::with_capacity(frames.len());
    for f in frames {
        if f.width != first.width || f.height != first.height {
            return Err(Error::InvalidFrame(
                "the picture size changes mid-clip".into(),
            ));
        }
        let cropped = crop(f, x, y, w, h)?;
        let src = to_ffmpeg(&cropped);
        let mut dst = ff::frame::Video::empty();
        sc.run(&src, &mut dst).map_err(ff("scale"))?;
        out.push(from_ffmpeg(&dst));
    }
    Ok(out)
}

fn crop(f: &Yuv420Frame, x: u32, y: u32, w: u32, h: u32) -> Result<Yuv420Frame> {
    let plane = |p: &[u8], stride: u32, x: u32, y: u32, w: u32, h: u32| {
        let mut v = Vec::with_capacity((w * h) as usize);
        for r in y..y + h {
            let s = (r * stride + x) as usize;
            v.extend_from_slice(&p[s..s + w as usize]);
        }
        v
    };
    let cw = f.chroma_width();
    let (cx, cy, cwid, chei) = (x / 2, y / 2, w.div_ceil(2), h.div_ceil(2));
    Yuv420Frame::from_planes(
        w,
        h,
        plane(&f.y, f.width, x, y, w, h),
        plane(&f.u, cw, cx, cy, cwid, chei),
        plane(&f.v, cw, cx, cy, cwid, chei),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_to_the_target_aspect_then_scales() {
        assert_eq!(centre_crop(176, 144, 640, 360), (0, 22, 176, 98));
        assert_eq!(centre_crop(640, 360, 176, 144), (100, 0, 440, 360));
        let f = Yuv420Frame::grey(176, 144).unwrap();
        let out = resize_all(&[f.clone(), f], 64, 36).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].width, out[0].height), (64, 36));
        assert!(out[0].y.iter().all(|&v| (127..=129).contains(&v)));
    }
}
