//! `Yuv420Frame`: one picture in planar 8-bit YUV 4:2:0 (FFmpeg's `yuv420p`), tightly packed.
//!
//! Everything between the decoder and the encoder — metrics, the ROI pre-filter, the benches —
//! works on this one type; conversion to and from FFmpeg's strided frames happens at the codec
//! boundary (`encode`, `decode`) and nowhere else.

use crate::error::{Error, Result};

/// One 8-bit 4:2:0 picture. Planes are packed without padding: `y` is `width × height`, `u` and
/// `v` are `chroma_width() × chroma_height()` (rounded up, as FFmpeg does for odd sizes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Yuv420Frame {
    pub width: u32,
    pub height: u32,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

/// Largest picture accepted anywhere in the crate (8K UHD): bounds every allocation sized by a
/// header we did not write (Y4M, a bitstream's sequence header).
pub const MAX_WIDTH: u32 = 7680;
pub const MAX_HEIGHT: u32 = 4320;

impl Yuv420Frame {
    /// A mid-grey picture (Y = U = V = 128).
    pub fn grey(width: u32, height: u32) -> Result<Self> {
        check_size(width, height)?;
        let (cw, ch) = chroma_size(width, height);
        Ok(Self {
            width,
            height,
            y: vec![128; (width * height) as usize],
            u: vec![128; (cw * ch) as usize],
            v: vec![128; (cw * ch) as usize],
        })
    }

    /// Builds a frame from packed planes, checking their lengths.
    pub fn from_planes(
        width: u32,
        height: u32,
        y: Vec<u8>,
        u: Vec<u8>,
        v: Vec<u8>,
    ) -> Result<Self> {
        check_size(width, height)?;
        let (cw, ch) = chroma_size(width, height);
        if y.len() != (width * height) as usize
            || u.len() != (cw * ch) as usize
            || v.len() != (cw * ch) as usize
        {
            return Err(Error::InvalidFrame(format!(
                "plane sizes {}/{}/{} do not match {width}x{height} 4:2:0",
                y.len(),
                u.len(),
                v.len()
            )));
        }
        Ok(Self {
            width,
            height,
            y,
            u,
            v,
        })
    }

    pub fn chroma_width(&self) -> u32 {
        chroma_size(self.width, self.height).0
    }

    pub fn chroma_height(&self) -> u32 {
        chroma_size(self.width, self.height).1
    }
}

/// Chroma plane size of a 4:2:0 picture (rounded up).
pub fn chroma_size(width: u32, height: u32) -> (u32, u32) {
    (width.div_ceil(2), height.div_ceil(2))
}

pub(crate) fn check_size(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 || width > MAX_WIDTH || height > MAX_HEIGHT {
        return Err(Error::InvalidFrame(format!(
            "size {width}x{height} (expected 1..={MAX_WIDTH} x 1..={MAX_HEIGHT})"
        )));
    }
    Ok(())
}
