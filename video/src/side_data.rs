//! The one place this crate touches FFmpeg's C structs directly: writing
//! `AV_FRAME_DATA_REGIONS_OF_INTEREST` side data onto a frame before it goes to the encoder.
//! ffmpeg-next can allocate side data (`Frame::new_side_data`) but only hands out a read-only
//! view of it, so filling the `AVRegionOfInterest` array needs raw pointers.
#![allow(unsafe_code)]

use std::mem::size_of;

use ffmpeg_next::ffi;
use ffmpeg_next::frame;
use ffmpeg_next::util::frame::side_data::Type;

use crate::error::{Error, Result};

/// One rectangle of `AVRegionOfInterest`, in pixels of the frame: `left..right` × `top..bottom`
/// (the right and bottom edges are exclusive, as FFmpeg's encoders read them), and the quality
/// offset `qoffset_num / qoffset_den` in [-1, 1] of the encoder's quantiser range (negative:
/// better quality).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RoiRect {
    pub top: i32,
    pub bottom: i32,
    pub left: i32,
    pub right: i32,
    pub qoffset_num: i32,
    pub qoffset_den: i32,
}

/// Replaces the frame's ROI side data with `rects` (removes it when `rects` is empty).
/// FFmpeg's wrappers read the array in order and let an earlier rectangle win where two
/// overlap; ours never overlap.
pub(crate) fn set_regions_of_interest(frame: &mut frame::Video, rects: &[RoiRect]) -> Result<()> {
    frame.remove_side_data(Type::REGIONS_OF_INTEREST);
    if rects.is_empty() {
        return Ok(());
    }
    let item = size_of::<ffi::AVRegionOfInterest>();
    let bytes = item * rects.len();
    let mut sd = frame
        .new_side_data(Type::REGIONS_OF_INTEREST, bytes)
        .ok_or_else(|| {
            Error::InvalidQualityMap(format!("could not allocate {bytes} bytes of ROI side data"))
        })?;
    // SAFETY: `sd` wraps the `AVFrameSideData` that `av_frame_new_side_data` just allocated for
    // this frame with `data` pointing at `bytes` writable bytes (an `av_malloc`'d buffer, aligned
    // for any C struct) that nothing else references yet. We write exactly `rects.len()`
    // `AVRegionOfInterest` values (a plain C struct of integers, no pointers) into it, so every
    // write is in bounds and properly aligned; `sd`'s borrow of `frame` keeps the buffer alive.
    unsafe {
        let sd = sd.as_mut_ptr();
        if (*sd).data.is_null() || ((*sd).size as usize) < bytes {
            return Err(Error::InvalidQualityMap(
                "ROI side data buffer too small".into(),
            ));
        }
        let base = (*sd).data.cast::<ffi::AVRegionOfInterest>();
        for (i, r) in rects.iter().enumerate() {
            base.add(i).write(ffi::AVRegionOfInterest {
                self_size: item as u32,
                top: r.top,
                bottom: r.bottom,
                left: r.left,
                right: r.right,
                qoffset: ffi::AVRational {
                    num: r.qoffset_num,
                    den: r.qoffset_den,
                },
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_data_reads_back_as_written() {
        let mut f = frame::Video::new(ffmpeg_next::format::Pixel::YUV420P, 64, 48);
        let rects = [
            RoiRect {
                top: 0,
                bottom: 16,
                left: 16,
                right: 48,
                qoffset_num: -20,
                qoffset_den: 64,
            },
            RoiRect {
                top: 32,
                bottom: 48,
                left: 0,
                right: 64,
                qoffset_num: 10,
                qoffset_den: 64,
            },
        ];
        set_regions_of_interest(&mut f, &rects).unwrap();
        let sd = f
            .side_data(Type::REGIONS_OF_INTEREST)
            .expect("side data attached");
        let item = size_of::<ffi::AVRegionOfInterest>();
        assert_eq!(sd.data().len(), 2 * item);
        // self_size, top, bottom, left, right, qoffset.num, qoffset.den: seven 32-bit fields.
        let words: Vec<i32> = sd.data()[item..]
            .chunks_exact(4)
            .take(7)
            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(words, [item as i32, 32, 48, 0, 64, 10, 64]);
        set_regions_of_interest(&mut f, &[]).unwrap();
        assert!(f.side_data(Type::REGIONS_OF_INTEREST).is_none());
    }
}
