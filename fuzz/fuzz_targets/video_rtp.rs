//! Untrusted video RTP (issue #14): arbitrary bytes cut into a sequence of datagrams, each fed
//! to frame assemblers of all three payload formats (VP8, H.264, AV1) and to the RTCP parser,
//! with time moving on. Never panics, and the assemblers keep their bounds: frames within the
//! byte cap, every frame accounted for.
//!
//! Input: records `op, len: u8, len bytes`:
//! - `op & 1 == 0`: the bytes are a whole datagram (RTP parse, or RTCP when the parse fails);
//! - `op & 1 == 1`: a well-formed RTP header is made from the first bytes (sequence number
//!   `+ (op >> 1 & 7) - 2` from the last one, so reordering, duplicates and gaps come up; the
//!   timestamp moves by a frame when `op & 0x10`; marker = `op & 0x20`) and the rest is the
//!   payload, so the depacketizers see payloads, not just the RTP parser;
//! - time advances by `(op >> 6) * 20` ms before each record.
#![no_main]

use std::time::{Duration, Instant};

use aic_sfu_bridge::rtcp::{Compound, Packet};
use aic_sfu_bridge::rtp::{self, RtpPacket};
use aic_sfu_bridge::video::{DEFAULT_MAX_FRAME_BYTES, FrameAssembler, VideoPayload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut assemblers = [
        FrameAssembler::new(VideoPayload::Vp8),
        FrameAssembler::new(VideoPayload::H264),
        FrameAssembler::new(VideoPayload::Av1),
    ];
    let mut now = Instant::now();
    let (mut seq, mut ts) = (0u16, 0u32);
    let mut datagram = Vec::with_capacity(300);
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (bytes, more) = tail.split_at(n);
        rest = more;
        now += Duration::from_millis(u64::from(op >> 6) * 20);
        datagram.clear();
        if op & 1 == 1 {
            seq = seq.wrapping_add(u16::from(op >> 1 & 7)).wrapping_sub(2);
            if op & 0x10 != 0 {
                ts = ts.wrapping_add(3000);
            }
            let h = rtp::Header {
                marker: op & 0x20 != 0,
                payload_type: 96,
                sequence: seq,
                timestamp: ts,
                ssrc: 7,
            };
            rtp::write(&h, &[], bytes, &mut datagram).expect("no extensions to refuse");
        } else {
            datagram.extend_from_slice(bytes);
        }
        match RtpPacket::parse(&datagram) {
            Ok(p) => {
                for a in &mut assemblers {
                    let _ = a.push(now, &p);
                }
            }
            Err(_) => {
                for p in Compound::new(&datagram) {
                    if let Ok(Packet::Nack { items, .. }) = p {
                        assert!(items.sequences().count() <= datagram.len() * 5);
                    }
                }
            }
        }
        for a in &mut assemblers {
            let _ = a.poll_keyframe_request(now);
            while let Some(f) = a.poll_frame() {
                assert!(f.data.len() <= DEFAULT_MAX_FRAME_BYTES + (64 << 10));
                a.recycle(f.data);
            }
        }
    }
    for a in &assemblers {
        let s = a.stats();
        assert!(s.frames <= s.packets);
    }
});
