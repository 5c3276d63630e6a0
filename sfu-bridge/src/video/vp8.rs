//! VP8 in RTP (RFC 7741): the payload descriptor, a depacketizer that joins one frame's
//! payloads, and a packetizer (15-bit PictureID, no other extensions).
//!
//! ```text
//!  payload descriptor (RFC 7741 §4.2)
//!   0 1 2 3 4 5 6 7
//!  +-+-+-+-+-+-+-+-+
//!  |X|R|N|S|R| PID | (mandatory)
//!  +-+-+-+-+-+-+-+-+
//!  |I|L|T|K| RSV   | (present when X)
//!  +-+-+-+-+-+-+-+-+
//!  |M| PictureID   | (present when I; M = 15-bit PictureID, one more byte)
//!  +-+-+-+-+-+-+-+-+
//!  |   TL0PICIDX   | (present when L)
//!  +-+-+-+-+-+-+-+-+
//!  |TID|Y| KEYIDX  | (present when T or K)
//!  +-+-+-+-+-+-+-+-+
//! ```
//! The frame starts in the packet with S = 1 and PID = 0; there, the first byte of the VP8
//! payload header carries the inverse keyframe flag P (bit 0: 0 = keyframe, RFC 7741 §4.3).

use super::{FrameInfo, VideoRtpError};

/// A parsed VP8 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Descriptor {
    /// N: the frame is not used as a reference.
    pub non_reference: bool,
    /// S: the first packet of a VP8 partition.
    pub start_of_partition: bool,
    /// The partition index (0..=7).
    pub partition_id: u8,
    /// The 7- or 15-bit PictureID, when I is set.
    pub picture_id: Option<u16>,
    /// TL0PICIDX, when L is set.
    pub tl0_pic_idx: Option<u8>,
    /// TID (temporal layer), when T is set.
    pub tid: Option<u8>,
    /// Y (layer sync), meaningful when T is set.
    pub layer_sync: bool,
    /// KEYIDX, when K is set.
    pub key_idx: Option<u8>,
}

impl Vp8Descriptor {
    /// Parses the descriptor at the start of `payload`; returns it and its length in bytes.
    pub fn parse(payload: &[u8]) -> Result<(Self, usize), VideoRtpError> {
        let &b0 = payload.first().ok_or(VideoRtpError::Empty)?;
        let mut d = Self {
            non_reference: b0 & 0x20 != 0,
            start_of_partition: b0 & 0x10 != 0,
            partition_id: b0 & 0x07,
            ..Self::default()
        };
        let mut pos = 1;
        let byte = |pos: usize| {
            payload
                .get(pos)
                .copied()
                .ok_or(VideoRtpError::Vp8Descriptor)
        };
        if b0 & 0x80 != 0 {
            let x = byte(pos)?;
            pos += 1;
            if x & 0x80 != 0 {
                let p = byte(pos)?;
                pos += 1;
                if p & 0x80 != 0 {
                    let lo = byte(pos)?;
                    pos += 1;
                    d.picture_id = Some((u16::from(p & 0x7F) << 8) | u16::from(lo));
                } else {
                    d.picture_id = Some(u16::from(p));
                }
            }
            if x & 0x40 != 0 {
                d.tl0_pic_idx = Some(byte(pos)?);
                pos += 1;
            }
            if x & 0x30 != 0 {
                let t = byte(pos)?;
                pos += 1;
                if x & 0x20 != 0 {
                    d.tid = Some(t >> 6);
                    d.layer_sync = t & 0x20 != 0;
                }
                if x & 0x10 != 0 {
                    d.key_idx = Some(t & 0x1F);
                }
            }
        }
        Ok((d, pos))
    }

    /// Whether this packet starts a frame (S = 1, PID = 0).
    pub fn starts_frame(&self) -> bool {
        self.start_of_partition && self.partition_id == 0
    }
}

/// Joins the payloads of one frame (in sequence order) into the VP8 frame.
#[derive(Debug, Default)]
pub struct Vp8Depacketizer {
    started: bool,
    /// Where this frame starts in `out` (the caller's buffer may hold other bytes before it).
    frame_start: usize,
}

impl Vp8Depacketizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the frame in progress.
    pub fn reset(&mut self) {
        self.started = false;
    }

    /// Whether `payload` is the first packet of a frame.
    pub fn is_frame_start(payload: &[u8]) -> bool {
        Vp8Descriptor::parse(payload).is_ok_and(|(d, _)| d.starts_frame())
    }

    /// Appends the VP8 bytes of the next packet of the frame to `out`.
    pub fn push(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), VideoRtpError> {
        let (d, n) = Vp8Descriptor::parse(payload)?;
        let body = &payload[n..];
        if !self.started {
            if !d.starts_frame() {
                return Err(VideoRtpError::Vp8NoStart);
            }
            if body.is_empty() {
                return Err(VideoRtpError::Empty);
            }
            self.started = true;
            self.frame_start = out.len();
        }
        out.extend_from_slice(body);
        Ok(())
    }

    /// Ends the frame: whether it is a keyframe (the P bit of its first byte).
    pub fn finish(&mut self, out: &[u8]) -> Result<FrameInfo, VideoRtpError> {
        let started = std::mem::take(&mut self.started);
        let first = out.get(self.frame_start).filter(|_| started);
        let &b = first.ok_or(VideoRtpError::Vp8NoStart)?;
        let keyframe = b & 0x01 == 0;
        Ok(FrameInfo {
            keyframe,
            parameter_sets: keyframe,
        })
    }
}

/// Splits VP8 frames into RTP payloads: a 4-byte descriptor (X = 1, I = 1, 15-bit PictureID
/// counting frames, S = 1 and PID = 0 on the first packet) and up to `mtu - 4` frame bytes.
#[derive(Debug, Clone)]
pub struct Vp8Packetizer {
    mtu: usize,
    picture_id: u16,
}

impl Vp8Packetizer {
    /// `mtu`: the largest payload (descriptor included), at least 5 bytes (smaller is raised).
    pub fn new(mtu: usize) -> Self {
        Self {
            mtu: mtu.max(5),
            picture_id: 0,
        }
    }

    /// The PictureID the next frame gets.
    pub fn with_picture_id(mut self, id: u16) -> Self {
        self.picture_id = id & 0x7FFF;
        self
    }

    /// Replaces `out` with the payloads of `frame` (inner buffers are reused); the last one
    /// carries the RTP marker bit.
    pub fn packetize(&mut self, frame: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), VideoRtpError> {
        if frame.is_empty() {
            return Err(VideoRtpError::Empty);
        }
        let room = self.mtu - 4;
        let mut n = 0;
        for (i, chunk) in frame.chunks(room).enumerate() {
            let p = super::slot(out, n);
            let s = if i == 0 { 0x10 } else { 0 };
            p.extend_from_slice(&[
                0x80 | s,
                0x80,
                0x80 | (self.picture_id >> 8) as u8,
                self.picture_id as u8,
            ]);
            p.extend_from_slice(chunk);
            n += 1;
        }
        out.truncate(n);
        self.picture_id = (self.picture_id + 1) & 0x7FFF;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_layouts() {
        // Minimal: S=1, PID=0, no extension.
        let (d, n) = Vp8Descriptor::parse(&[0x10, 0xAA]).unwrap();
        assert_eq!(n, 1);
        assert!(d.starts_frame() && d.picture_id.is_none());
        // X, I with 7-bit PictureID 0x55, N set, PID 2.
        let (d, n) = Vp8Descriptor::parse(&[0xA2, 0x80, 0x55, 0]).unwrap();
        assert_eq!((n, d.picture_id, d.partition_id), (3, Some(0x55), 2));
        assert!(d.non_reference && !d.starts_frame());
        // X, I (15-bit 0x1234), L, T, K: TID 2, Y, KEYIDX 17.
        let p = [0x90, 0xF0, 0x92, 0x34, 7, 0b1011_0001, 0x9D];
        let (d, n) = Vp8Descriptor::parse(&p).unwrap();
        assert_eq!(n, 6);
        assert_eq!(d.picture_id, Some(0x1234));
        assert_eq!(d.tl0_pic_idx, Some(7));
        assert_eq!((d.tid, d.layer_sync, d.key_idx), (Some(2), true, Some(17)));
        // Only K: the TID/Y/KEYIDX byte is there, TID is not reported.
        let (d, n) = Vp8Descriptor::parse(&[0x90, 0x10, 0x05]).unwrap();
        assert_eq!((n, d.tid, d.key_idx), (3, None, Some(5)));
        // Truncated descriptors are errors.
        for bad in [
            &[][..],
            &[0x80],
            &[0x80, 0x80],
            &[0x80, 0x80, 0x80],
            &[0x80, 0x40],
        ] {
            assert!(Vp8Descriptor::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn depacketizes_and_detects_keyframes() {
        let mut d = Vp8Depacketizer::new();
        let mut out = vec![0xEE]; // bytes before the frame stay untouched
        d.push(&[0x90, 0x80, 0x80, 0x01, 0x50, 0x01], &mut out)
            .unwrap();
        d.push(&[0x80, 0x80, 0x80, 0x01, 0x02, 0x03], &mut out)
            .unwrap();
        let info = d.finish(&out).unwrap();
        assert!(info.keyframe);
        assert_eq!(out, [0xEE, 0x50, 0x01, 0x02, 0x03]);
        // P = 1: an interframe.
        out.clear();
        d.push(&[0x10, 0x31], &mut out).unwrap();
        assert!(!d.finish(&out).unwrap().keyframe);
        // A frame that does not start with S=1/PID=0.
        out.clear();
        assert_eq!(
            d.push(&[0x00, 0x31], &mut out),
            Err(VideoRtpError::Vp8NoStart)
        );
        assert!(d.finish(&out).is_err());
    }

    #[test]
    fn packetizer_descriptor_and_sizes() {
        let mut p = Vp8Packetizer::new(10).with_picture_id(0x7FFF);
        let mut out = vec![vec![9; 100]; 5];
        let frame: Vec<u8> = (0..13).collect();
        p.packetize(&frame, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0][..4], [0x90, 0x80, 0xFF, 0xFF]);
        assert_eq!(out[1][..4], [0x80, 0x80, 0xFF, 0xFF]);
        assert_eq!(out[2], [0x80, 0x80, 0xFF, 0xFF, 12]);
        p.packetize(&frame, &mut out).unwrap();
        assert_eq!(out[0][..4], [0x90, 0x80, 0x80, 0x00], "PictureID wraps");
        assert!(p.packetize(&[], &mut out).is_err());
    }
}
